//! Info.plist bytes (XML or binary, through the plist crate) into a
//! validated bundle: an error naming the key, never a panic. A project's
//! Info.plist goes through Xcode's build variables first, as
//! `driverkit build` takes it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut info) = driverkit_bundle::parse_info(data) {
        let _ = driverkit_bundle::check_built(&info);
        let settings = driverkit_bundle::xcode::Settings::new("com.example.F", "F", "1.0");
        let _ = settings.apply(&mut info);
        let _ = driverkit_bundle::Bundle::from_info(std::path::Path::new("/f.dext"), info);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = driverkit_bundle::xcode::expand(text, |name| Some(name.to_lowercase()));
    }
});
