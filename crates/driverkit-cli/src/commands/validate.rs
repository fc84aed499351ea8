//! `driverkit validate PATH`.

use std::path::Path;

use driverkit_bundle::Bundle;

pub fn validate(path: &Path) -> Result<(), String> {
    if path.is_file() {
        // A project's Info.plist on its own: what it still needs to build.
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let info =
            driverkit_bundle::parse_info(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        driverkit_bundle::check_built(&info).map_err(|e| format!("{}: {e}", path.display()))?;
        return Err(format!(
            "{}: a bare Info.plist; validate the bundle it is part of (a `<bundle-id>.dext` directory, such as build/NAME.app/Contents/Library/SystemExtensions/<bundle-id>.dext)",
            path.display()
        ));
    }
    let bundle = Bundle::load(path).map_err(|e| e.to_string())?;
    bundle.check_entitlements().map_err(|e| e.to_string())?;
    let development = bundle
        .entitlements
        .as_ref()
        .and_then(|e| e.development_only());
    println!(
        "{} {} ({}): valid{}",
        bundle.identifier,
        bundle.short_version(),
        bundle.version(),
        if development.is_some() {
            " for development"
        } else {
            ""
        }
    );
    if let Some(what) = development {
        println!(
            "  warning: {what}; the system activates it only in developer mode (`driverkit sysext developer on`)"
        );
    }
    println!("  executable: {}", bundle.executable.display());
    if bundle
        .info
        .get("OSBundleUsageDescription")
        .and_then(plist::Value::as_string)
        .is_some_and(str::is_empty)
    {
        println!(
            "  warning: OSBundleUsageDescription is empty; the person approving the driver sees no reason for it"
        );
    }
    match driverkit_bundle::location::containing_app(path) {
        Ok(app) => println!("  in app: {}", app.display()),
        // Valid, but the system will not load it from here.
        Err(e) => println!("  warning: {e}"),
    }
    for p in &bundle.personalities {
        println!("  personality {:?}", p.name);
        println!("    IOUserClass      {}", p.user_class);
        println!("    IOClass          {}", p.io_class);
        println!("    IOProviderClass  {}", p.provider_class);
        println!(
            "    IOUserServerName {}{}",
            p.server_name,
            if p.one_process { " (one process)" } else { "" }
        );
        println!("    IOMatchCategory  {}", p.match_category);
        println!("    IOProbeScore     {}", p.probe_score);
        for key in ["IOPropertyMatch", "IONameMatch", "IOResourceMatch"] {
            if let Some(v) = p.properties.get(key) {
                println!("    {key:<16} {}", driverkitd::ioreg::format_value(v));
            }
        }
    }
    Ok(())
}
