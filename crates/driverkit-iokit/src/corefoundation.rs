//! CoreFoundation's C functions, over [`crate::cf`]: what
//! `include/CoreFoundation/CoreFoundation.h` declares.

#![allow(non_snake_case, non_upper_case_globals)]
// C entry points: see lib.rs.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use driverkit_wire::sync::Locked;
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::Mutex;

use crate::cf::{self, type_id, CFTypeRef, Number, Value};
use crate::guard;

pub type Boolean = u8;
pub type CFIndex = isize;

/// `kCFStringEncodingUTF8` and `kCFStringEncodingASCII`: the encodings
/// strings are created from and read out in (ASCII being UTF-8's subset).
const UTF8: u32 = 0x0800_0100;
const ASCII: u32 = 0x0600;

/// A pointer the header exports as a constant (`kCFBooleanTrue`).
#[repr(transparent)]
pub struct Constant(CFTypeRef);
// SAFETY: it points at an immutable static object.
unsafe impl Sync for Constant {}

#[no_mangle]
pub static kCFBooleanTrue: Constant = Constant(&cf::TRUE as *const cf::Object as CFTypeRef);
#[no_mangle]
pub static kCFBooleanFalse: Constant = Constant(&cf::FALSE as *const cf::Object as CFTypeRef);
#[no_mangle]
pub static kCFAllocatorDefault: Constant = Constant(std::ptr::null());

/// `CFDictionaryKeyCallBacks` and `CFDictionaryValueCallBacks`: taken and
/// not called; every dictionary here retains CF objects and compares them
/// with `CFEqual`, which is what these two ask for.
#[repr(C)]
pub struct CallBacks([usize; 6]);
#[no_mangle]
pub static kCFTypeDictionaryKeyCallBacks: CallBacks = CallBacks([0; 6]);
#[no_mangle]
pub static kCFTypeDictionaryValueCallBacks: CallBacks = CallBacks([0; 6]);
#[no_mangle]
pub static kCFCopyStringDictionaryKeyCallBacks: CallBacks = CallBacks([0; 6]);
#[no_mangle]
pub static kCFTypeArrayCallBacks: CallBacks = CallBacks([0; 6]);

#[no_mangle]
pub extern "C" fn CFRetain(p: CFTypeRef) -> CFTypeRef {
    guard(std::ptr::null(), || {
        if cf::retain(p) {
            p
        } else {
            std::ptr::null()
        }
    })
}

#[no_mangle]
pub extern "C" fn CFRelease(p: CFTypeRef) {
    guard((), || cf::release(p))
}

#[no_mangle]
pub extern "C" fn CFGetRetainCount(p: CFTypeRef) -> CFIndex {
    guard(0, || cf::retain_count(p))
}

#[no_mangle]
pub extern "C" fn CFGetTypeID(p: CFTypeRef) -> usize {
    guard(0, || cf::type_id(p))
}

#[no_mangle]
pub extern "C" fn CFEqual(a: CFTypeRef, b: CFTypeRef) -> Boolean {
    guard(0, || cf::equal(a, b) as Boolean)
}

#[no_mangle]
pub extern "C" fn CFStringGetTypeID() -> usize {
    type_id::STRING
}
#[no_mangle]
pub extern "C" fn CFNumberGetTypeID() -> usize {
    type_id::NUMBER
}
#[no_mangle]
pub extern "C" fn CFDataGetTypeID() -> usize {
    type_id::DATA
}
#[no_mangle]
pub extern "C" fn CFBooleanGetTypeID() -> usize {
    type_id::BOOLEAN
}
#[no_mangle]
pub extern "C" fn CFArrayGetTypeID() -> usize {
    type_id::ARRAY
}
#[no_mangle]
pub extern "C" fn CFDictionaryGetTypeID() -> usize {
    type_id::DICTIONARY
}

/// Reads a C string the app passed; `None` for NULL or text that is not
/// UTF-8.
pub(crate) fn text(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller passes a NUL-terminated string (the C contract).
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().ok().map(str::to_owned)
}

#[no_mangle]
pub extern "C" fn CFStringCreateWithCString(
    _allocator: CFTypeRef,
    s: *const c_char,
    encoding: u32,
) -> CFTypeRef {
    guard(std::ptr::null(), || {
        if encoding != UTF8 && encoding != ASCII {
            return std::ptr::null();
        }
        match text(s) {
            Some(t) if encoding == UTF8 || t.is_ascii() => {
                cf::create(Value::String(CString::new(t).unwrap_or_default()))
            }
            _ => std::ptr::null(),
        }
    })
}

/// `CFSTR("…")` expands to this: one string per text, never freed.
#[no_mangle]
pub extern "C" fn __CFStringMakeConstantString(s: *const c_char) -> CFTypeRef {
    guard(std::ptr::null(), || {
        if s.is_null() {
            return std::ptr::null();
        }
        // SAFETY: CFSTR's argument is a string literal.
        cf::constant_string(unsafe { CStr::from_ptr(s) })
    })
}

#[no_mangle]
pub extern "C" fn CFStringGetLength(s: CFTypeRef) -> CFIndex {
    // CoreFoundation counts UTF-16 units.
    guard(0, || {
        cf::string(s).map_or(0, |t| t.encode_utf16().count() as CFIndex)
    })
}

/// Copies the string and its NUL into `buffer` if it fits in `size`.
#[no_mangle]
pub extern "C" fn CFStringGetCString(
    s: CFTypeRef,
    buffer: *mut c_char,
    size: CFIndex,
    encoding: u32,
) -> Boolean {
    guard(0, || {
        let Some(t) = cf::string(s) else { return 0 };
        if buffer.is_null() || (encoding != UTF8 && encoding != ASCII) {
            return 0;
        }
        if encoding == ASCII && !t.is_ascii() {
            return 0;
        }
        if size < 0 || t.len() >= size as usize {
            return 0;
        }
        // SAFETY: `buffer` holds `size` bytes (the C contract), more than
        // the text and its NUL.
        unsafe {
            std::ptr::copy_nonoverlapping(t.as_ptr(), buffer.cast(), t.len());
            *buffer.add(t.len()) = 0;
        }
        1
    })
}

/// The string's own UTF-8, valid while the string lives.
#[no_mangle]
pub extern "C" fn CFStringGetCStringPtr(s: CFTypeRef, encoding: u32) -> *const c_char {
    guard(std::ptr::null(), || {
        if encoding != UTF8 && !(encoding == ASCII && cf::string(s).is_some_and(|t| t.is_ascii())) {
            return std::ptr::null();
        }
        cf::string_ptr(s)
    })
}

/// `CFNumberType`: which C type `value` points at.
fn read_number(kind: isize, value: *const c_void) -> Option<Number> {
    if value.is_null() {
        return None;
    }
    // SAFETY: `value` points at a value of the type `kind` names (the C
    // contract); unaligned reads tolerate any placement.
    unsafe {
        Some(match kind {
            1 | 7 => Number::Int(i64::from(value.cast::<i8>().read_unaligned())),
            2 | 8 => Number::Int(i64::from(value.cast::<i16>().read_unaligned())),
            3 | 9 => Number::Int(i64::from(value.cast::<i32>().read_unaligned())),
            4 | 10 | 11 | 14 | 15 => Number::Int(value.cast::<i64>().read_unaligned()),
            5 | 12 => Number::Float(f64::from(value.cast::<f32>().read_unaligned())),
            6 | 13 | 16 => Number::Float(value.cast::<f64>().read_unaligned()),
            _ => return None,
        })
    }
}

#[no_mangle]
pub extern "C" fn CFNumberCreate(
    _allocator: CFTypeRef,
    kind: isize,
    value: *const c_void,
) -> CFTypeRef {
    guard(std::ptr::null(), || match read_number(kind, value) {
        Some(n) => cf::create(Value::Number(n)),
        None => std::ptr::null(),
    })
}

/// Writes the number as `kind` into `out`; false when that loses
/// anything (the value is still written, converted, as CoreFoundation does).
#[no_mangle]
pub extern "C" fn CFNumberGetValue(number: CFTypeRef, kind: isize, out: *mut c_void) -> Boolean {
    guard(0, || {
        let Some(n) = cf::with(number, |o| match o.value {
            Value::Number(n) => Some(n),
            _ => None,
        })
        .flatten() else {
            return 0;
        };
        if out.is_null() {
            return 0;
        }
        let (i, f) = match n {
            Number::Int(i) => (i, i as f64),
            Number::Float(f) => (f as i64, f),
        };
        let exact_int = |fits: bool| fits && (matches!(n, Number::Int(_)) || f.fract() == 0.0);
        // SAFETY: `out` has room for the type `kind` names (the C contract).
        unsafe {
            match kind {
                1 | 7 => {
                    out.cast::<i8>().write_unaligned(i as i8);
                    exact_int(i8::try_from(i).is_ok()) as Boolean
                }
                2 | 8 => {
                    out.cast::<i16>().write_unaligned(i as i16);
                    exact_int(i16::try_from(i).is_ok()) as Boolean
                }
                3 | 9 => {
                    out.cast::<i32>().write_unaligned(i as i32);
                    exact_int(i32::try_from(i).is_ok()) as Boolean
                }
                4 | 10 | 11 | 14 | 15 => {
                    out.cast::<i64>().write_unaligned(i);
                    exact_int(true) as Boolean
                }
                5 | 12 => {
                    out.cast::<f32>().write_unaligned(f as f32);
                    (f64::from(f as f32) == f) as Boolean
                }
                6 | 13 | 16 => {
                    out.cast::<f64>().write_unaligned(f);
                    1
                }
                _ => 0,
            }
        }
    })
}

#[no_mangle]
pub extern "C" fn CFDataCreate(
    _allocator: CFTypeRef,
    bytes: *const u8,
    length: CFIndex,
) -> CFTypeRef {
    guard(std::ptr::null(), || {
        if length < 0 || (bytes.is_null() && length > 0) {
            return std::ptr::null();
        }
        let data = if length == 0 {
            Vec::new()
        } else {
            // SAFETY: `bytes` holds `length` bytes (the C contract).
            unsafe { std::slice::from_raw_parts(bytes, length as usize) }.to_vec()
        };
        cf::create(Value::Data(data))
    })
}

#[no_mangle]
pub extern "C" fn CFDataGetLength(data: CFTypeRef) -> CFIndex {
    guard(0, || {
        cf::with(data, |o| match &o.value {
            Value::Data(d) => d.len() as CFIndex,
            _ => 0,
        })
        .unwrap_or(0)
    })
}

/// The data's own bytes, valid while it lives.
#[no_mangle]
pub extern "C" fn CFDataGetBytePtr(data: CFTypeRef) -> *const u8 {
    guard(std::ptr::null(), || {
        cf::with(data, |o| match &o.value {
            Value::Data(d) => d.as_ptr(),
            _ => std::ptr::null(),
        })
        .unwrap_or(std::ptr::null())
    })
}

#[no_mangle]
pub extern "C" fn CFBooleanGetValue(b: CFTypeRef) -> Boolean {
    guard(0, || {
        cf::with(b, |o| matches!(o.value, Value::Boolean(true)) as Boolean).unwrap_or(0)
    })
}

#[no_mangle]
pub extern "C" fn CFArrayGetCount(array: CFTypeRef) -> CFIndex {
    guard(0, || {
        cf::with(array, |o| match &o.value {
            Value::Array(items) => items.len() as CFIndex,
            _ => 0,
        })
        .unwrap_or(0)
    })
}

/// Borrowed: the array holds it.
#[no_mangle]
pub extern "C" fn CFArrayGetValueAtIndex(array: CFTypeRef, index: CFIndex) -> CFTypeRef {
    guard(std::ptr::null(), || {
        cf::with(array, |o| match &o.value {
            Value::Array(items) => usize::try_from(index)
                .ok()
                .and_then(|i| items.get(i))
                .map_or(std::ptr::null(), |p| *p as CFTypeRef),
            _ => std::ptr::null(),
        })
        .unwrap_or(std::ptr::null())
    })
}

#[no_mangle]
pub extern "C" fn CFDictionaryCreateMutable(
    _allocator: CFTypeRef,
    _capacity: CFIndex,
    _keys: *const c_void,
    _values: *const c_void,
) -> CFTypeRef {
    guard(std::ptr::null(), || {
        cf::create(Value::Dictionary(Mutex::new(Vec::new())))
    })
}

#[no_mangle]
pub extern "C" fn CFDictionaryCreate(
    allocator: CFTypeRef,
    keys: *const CFTypeRef,
    values: *const CFTypeRef,
    count: CFIndex,
    key_callbacks: *const c_void,
    value_callbacks: *const c_void,
) -> CFTypeRef {
    guard(std::ptr::null(), || {
        if count < 0 || (count > 0 && (keys.is_null() || values.is_null())) {
            return std::ptr::null();
        }
        let d = CFDictionaryCreateMutable(allocator, count, key_callbacks, value_callbacks);
        for i in 0..count as usize {
            // SAFETY: both arrays hold `count` references (the C contract).
            let (k, v) = unsafe { (*keys.add(i), *values.add(i)) };
            if !cf::dictionary_set(d, k, v, false) {
                cf::release(d);
                return std::ptr::null();
            }
        }
        d
    })
}

#[no_mangle]
pub extern "C" fn CFDictionarySetValue(d: CFTypeRef, key: CFTypeRef, value: CFTypeRef) {
    guard((), || {
        cf::dictionary_set(d, key, value, false);
    })
}

#[no_mangle]
pub extern "C" fn CFDictionaryAddValue(d: CFTypeRef, key: CFTypeRef, value: CFTypeRef) {
    guard((), || {
        cf::dictionary_set(d, key, value, true);
    })
}

#[no_mangle]
pub extern "C" fn CFDictionaryRemoveValue(d: CFTypeRef, key: CFTypeRef) {
    guard((), || cf::dictionary_remove(d, key))
}

/// Borrowed: the dictionary holds it.
#[no_mangle]
pub extern "C" fn CFDictionaryGetValue(d: CFTypeRef, key: CFTypeRef) -> CFTypeRef {
    guard(std::ptr::null(), || cf::dictionary_get(d, key))
}

#[no_mangle]
pub extern "C" fn CFDictionaryContainsKey(d: CFTypeRef, key: CFTypeRef) -> Boolean {
    guard(0, || (!cf::dictionary_get(d, key).is_null()) as Boolean)
}

#[no_mangle]
pub extern "C" fn CFDictionaryGetCount(d: CFTypeRef) -> CFIndex {
    guard(0, || {
        cf::with(d, |o| match &o.value {
            Value::Dictionary(pairs) => pairs.locked().len() as CFIndex,
            _ => 0,
        })
        .unwrap_or(0)
    })
}

/// Fills `keys` and `values` (each with room for `CFDictionaryGetCount`
/// references, borrowed; either may be NULL).
#[no_mangle]
pub extern "C" fn CFDictionaryGetKeysAndValues(
    d: CFTypeRef,
    keys: *mut CFTypeRef,
    values: *mut CFTypeRef,
) {
    guard((), || {
        let pairs = cf::with(d, |o| match &o.value {
            Value::Dictionary(pairs) => pairs.locked().clone(),
            _ => Vec::new(),
        })
        .unwrap_or_default();
        for (i, (k, v)) in pairs.into_iter().enumerate() {
            // SAFETY: the C contract: room for every pair's key and value.
            unsafe {
                if !keys.is_null() {
                    *keys.add(i) = k as CFTypeRef;
                }
                if !values.is_null() {
                    *values.add(i) = v as CFTypeRef;
                }
            }
        }
    })
}
