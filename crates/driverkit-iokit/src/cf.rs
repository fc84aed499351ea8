//! The CoreFoundation subset IOKitLib's calls take and give: strings,
//! numbers, data, booleans, arrays and dictionaries, reference counted.
//!
//! Why not a real CoreFoundation: Apple's open one (swift-corelibs-
//! foundation's `CoreFoundation`) needs ICU and libdispatch and is packaged
//! nowhere we build; GNUstep's corebase is not packaged in Debian. What
//! IOKitLib needs is small: matching dictionaries in, property values out.
//!
//! A reference is a pointer to an [`Object`]. Every live object is in one
//! table, and every call looks its argument up there before touching it:
//! a released, foreign or garbage pointer is refused (the call returns
//! NULL, 0 or false) instead of being read. Apple's CoreFoundation would
//! crash; a library a test engineer scripts from Python should not.
//! Reference counts live in that table too, under its lock, so that a
//! lookup and a last release never race.

use driverkit_wire::sync::Locked;
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::{Mutex, MutexGuard, OnceLock};

use plist::Value as Plist;

/// `CFTypeRef`.
pub type CFTypeRef = *const c_void;

/// A CoreFoundation value.
pub enum Value {
    String(CString),
    Number(Number),
    Data(Vec<u8>),
    Boolean(bool),
    /// Each element is a reference the array holds.
    Array(Vec<usize>),
    /// Each key and value is a reference the dictionary holds.
    Dictionary(Mutex<Vec<(usize, usize)>>),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Number {
    Int(i64),
    Float(f64),
}

pub struct Object {
    pub value: Value,
}

/// `CFGetTypeID`'s answers (the numbers are ours; compare them with
/// `CFStringGetTypeID()` and friends, as CoreFoundation asks).
pub mod type_id {
    pub const STRING: usize = 7;
    pub const DICTIONARY: usize = 18;
    pub const ARRAY: usize = 19;
    pub const DATA: usize = 20;
    pub const BOOLEAN: usize = 21;
    pub const NUMBER: usize = 22;
}

/// `kCFBooleanTrue` and `kCFBooleanFalse`: immortal, outside the table.
pub static TRUE: Object = Object {
    value: Value::Boolean(true),
};
pub static FALSE: Object = Object {
    value: Value::Boolean(false),
};

/// Live objects and their reference counts; `IMMORTAL` never drops.
fn live() -> MutexGuard<'static, HashMap<usize, usize>> {
    static LIVE: OnceLock<Mutex<HashMap<usize, usize>>> = OnceLock::new();
    LIVE.get_or_init(Default::default).locked()
}

const IMMORTAL: usize = usize::MAX;

fn is_static(p: usize) -> bool {
    p == &TRUE as *const Object as usize || p == &FALSE as *const Object as usize
}

/// A new object with one reference (the caller's: the Create rule).
pub fn create(value: Value) -> CFTypeRef {
    let p = Box::into_raw(Box::new(Object { value })) as usize;
    live().insert(p, 1);
    p as CFTypeRef
}

/// An object that is never freed (`CFSTR`'s strings).
fn create_immortal(value: Value) -> CFTypeRef {
    let p = Box::into_raw(Box::new(Object { value })) as usize;
    live().insert(p, IMMORTAL);
    p as CFTypeRef
}

pub fn boolean(b: bool) -> CFTypeRef {
    (if b { &TRUE } else { &FALSE }) as *const Object as CFTypeRef
}

/// `CFRetain`: false when `p` is not a live object.
pub fn retain(p: CFTypeRef) -> bool {
    let p = p as usize;
    if is_static(p) {
        return true;
    }
    match live().get_mut(&p) {
        Some(n) => {
            if *n != IMMORTAL {
                *n += 1;
            }
            true
        }
        None => false,
    }
}

/// `CFRelease`: frees the object (and releases what it holds) with its
/// last reference. A pointer that is not a live object is ignored.
pub fn release(p: CFTypeRef) {
    let p = p as usize;
    if is_static(p) {
        return;
    }
    let free = {
        let mut live = live();
        match live.get_mut(&p) {
            Some(n) if *n == IMMORTAL => false,
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                live.remove(&p);
                true
            }
            None => false,
        }
    };
    if free {
        // SAFETY: `p` came from `Box::into_raw` in `create` and was in the
        // table until now; its last reference is gone, so nothing else
        // frees it or reaches it through the table.
        let object = unsafe { Box::from_raw(p as *mut Object) };
        match object.value {
            Value::Array(items) => items.into_iter().for_each(|i| release(i as CFTypeRef)),
            Value::Dictionary(pairs) => {
                for (k, v) in pairs.into_inner().unwrap_or_else(|e| e.into_inner()) {
                    release(k as CFTypeRef);
                    release(v as CFTypeRef);
                }
            }
            _ => {}
        }
    }
}

/// `CFGetRetainCount`.
pub fn retain_count(p: CFTypeRef) -> isize {
    let p = p as usize;
    if is_static(p) {
        return isize::MAX;
    }
    match live().get(&p) {
        Some(&IMMORTAL) => isize::MAX,
        Some(&n) => n as isize,
        None => 0,
    }
}

/// Runs `f` on the live object `p` (held for the while), or answers
/// `None` for anything else.
pub fn with<R>(p: CFTypeRef, f: impl FnOnce(&Object) -> R) -> Option<R> {
    if p.is_null() || !retain(p) {
        return None;
    }
    // SAFETY: `p` is a live object, and the reference just taken keeps it
    // alive until the release below.
    let r = f(unsafe { &*(p as *const Object) });
    release(p);
    Some(r)
}

pub fn type_id(p: CFTypeRef) -> usize {
    with(p, |o| match o.value {
        Value::String(_) => type_id::STRING,
        Value::Number(_) => type_id::NUMBER,
        Value::Data(_) => type_id::DATA,
        Value::Boolean(_) => type_id::BOOLEAN,
        Value::Array(_) => type_id::ARRAY,
        Value::Dictionary(_) => type_id::DICTIONARY,
    })
    .unwrap_or(0)
}

/// `CFEqual`: same kind and same contents (numbers by value; dictionaries
/// whatever their order).
pub fn equal(a: CFTypeRef, b: CFTypeRef) -> bool {
    if a == b {
        return !a.is_null();
    }
    match (to_plist(a), to_plist(b)) {
        (Some(x), Some(y)) => plist_equal(&x, &y),
        _ => false,
    }
}

fn plist_equal(a: &Plist, b: &Plist) -> bool {
    match (a, b) {
        (Plist::Integer(_) | Plist::Real(_), Plist::Integer(_) | Plist::Real(_)) => {
            number_of(a) == number_of(b)
        }
        (Plist::Dictionary(x), Plist::Dictionary(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| plist_equal(v, w)))
        }
        (Plist::Array(x), Plist::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| plist_equal(v, w))
        }
        _ => a == b,
    }
}

fn number_of(v: &Plist) -> Option<f64> {
    match v {
        Plist::Integer(i) => i
            .as_signed()
            .map(|i| i as f64)
            .or(i.as_unsigned().map(|u| u as f64)),
        Plist::Real(r) => Some(*r),
        _ => None,
    }
}

/// `__CFStringMakeConstantString` (behind `CFSTR`): one immortal string
/// per text.
pub fn constant_string(text: &CStr) -> CFTypeRef {
    static INTERNED: OnceLock<Mutex<HashMap<CString, usize>>> = OnceLock::new();
    let mut interned = INTERNED.get_or_init(Default::default).locked();
    if let Some(&p) = interned.get(text) {
        return p as CFTypeRef;
    }
    let p = create_immortal(Value::String(text.to_owned()));
    interned.insert(text.to_owned(), p as usize);
    p
}

/// The text of a string object.
pub fn string(p: CFTypeRef) -> Option<String> {
    with(p, |o| match &o.value {
        Value::String(s) => Some(s.to_string_lossy().into_owned()),
        _ => None,
    })
    .flatten()
}

/// Where a string object's NUL-terminated UTF-8 lives (as long as it does).
pub fn string_ptr(p: CFTypeRef) -> *const c_char {
    with(p, |o| match &o.value {
        Value::String(s) => s.as_ptr(),
        _ => std::ptr::null(),
    })
    .unwrap_or(std::ptr::null())
}

/// A dictionary's value for `key` (borrowed: the dictionary holds it).
pub fn dictionary_get(d: CFTypeRef, key: CFTypeRef) -> CFTypeRef {
    with(d, |o| match &o.value {
        Value::Dictionary(pairs) => pairs
            .locked()
            .iter()
            .find(|(k, _)| equal(*k as CFTypeRef, key))
            .map_or(std::ptr::null(), |(_, v)| *v as CFTypeRef),
        _ => std::ptr::null(),
    })
    .unwrap_or(std::ptr::null())
}

/// Sets `key` to `value` (both retained); `only_new` leaves an existing
/// key as it is (`CFDictionaryAddValue`). False if any is not a live object
/// of the right kind.
pub fn dictionary_set(d: CFTypeRef, key: CFTypeRef, value: CFTypeRef, only_new: bool) -> bool {
    if !retain(key) {
        return false;
    }
    if !retain(value) {
        release(key);
        return false;
    }
    let mut give_back = vec![key, value];
    let done = with(d, |o| {
        let Value::Dictionary(pairs) = &o.value else {
            return false;
        };
        let mut pairs = pairs.locked();
        match pairs.iter_mut().find(|(k, _)| equal(*k as CFTypeRef, key)) {
            Some(_) if only_new => {}
            Some(pair) => {
                // The old value goes; the old key stays (CoreFoundation's
                // rule), so the new key's reference is given back.
                give_back = vec![key, pair.1 as CFTypeRef];
                pair.1 = value as usize;
            }
            None => {
                pairs.push((key as usize, value as usize));
                give_back.clear();
            }
        }
        true
    })
    .unwrap_or(false);
    give_back.into_iter().for_each(release);
    done
}

/// Removes `key` and what it maps to.
pub fn dictionary_remove(d: CFTypeRef, key: CFTypeRef) {
    let removed = with(d, |o| match &o.value {
        Value::Dictionary(pairs) => {
            let mut pairs = pairs.locked();
            let i = pairs
                .iter()
                .position(|(k, _)| equal(*k as CFTypeRef, key))?;
            Some(pairs.remove(i))
        }
        _ => None,
    })
    .flatten();
    if let Some((k, v)) = removed {
        release(k as CFTypeRef);
        release(v as CFTypeRef);
    }
}

/// A new object for a property value (dates, which CF has and we do not,
/// become nothing).
pub fn from_plist(v: &Plist) -> CFTypeRef {
    match v {
        Plist::String(s) => create(Value::String(
            CString::new(s.replace('\0', "")).unwrap_or_default(),
        )),
        Plist::Integer(i) => create(Value::Number(match i.as_signed() {
            Some(s) => Number::Int(s),
            // Above i64::MAX: CFNumber has no unsigned 64-bit type; the
            // bits are kept, as CoreFoundation does.
            None => Number::Int(i.as_unsigned().unwrap_or(0) as i64),
        })),
        Plist::Real(r) => create(Value::Number(Number::Float(*r))),
        Plist::Boolean(b) => boolean(*b),
        Plist::Data(d) => create(Value::Data(d.clone())),
        Plist::Array(items) => {
            let items = items
                .iter()
                .map(from_plist)
                .filter(|p| !p.is_null())
                .map(|p| p as usize)
                .collect();
            create(Value::Array(items))
        }
        Plist::Dictionary(d) => {
            let pairs = d
                .iter()
                .filter_map(|(k, v)| {
                    let v = from_plist(v);
                    (!v.is_null()).then(|| {
                        let k = create(Value::String(
                            CString::new(k.replace('\0', "")).unwrap_or_default(),
                        ));
                        (k as usize, v as usize)
                    })
                })
                .collect();
            create(Value::Dictionary(Mutex::new(pairs)))
        }
        _ => std::ptr::null(),
    }
}

/// The property value an object is, for matching; `None` for anything that
/// is not a live object (or a dictionary keyed by other than strings, or
/// one that holds itself).
pub fn to_plist(p: CFTypeRef) -> Option<Plist> {
    to_plist_within(p, MAX_DEPTH)
}

/// Nesting deeper than any matching dictionary or property: past it, a
/// container that holds itself.
const MAX_DEPTH: usize = 32;

fn to_plist_within(p: CFTypeRef, depth: usize) -> Option<Plist> {
    let depth = depth.checked_sub(1)?;
    with(p, |o| {
        Some(match &o.value {
            Value::String(s) => Plist::String(s.to_string_lossy().into_owned()),
            Value::Number(Number::Int(i)) => Plist::Integer((*i).into()),
            Value::Number(Number::Float(f)) => Plist::Real(*f),
            Value::Data(d) => Plist::Data(d.clone()),
            Value::Boolean(b) => Plist::Boolean(*b),
            Value::Array(items) => Plist::Array(
                items
                    .iter()
                    .map(|i| to_plist_within(*i as CFTypeRef, depth))
                    .collect::<Option<_>>()?,
            ),
            Value::Dictionary(pairs) => {
                let pairs = pairs.locked().clone();
                let mut d = plist::Dictionary::new();
                for (k, v) in pairs {
                    d.insert(
                        string(k as CFTypeRef)?,
                        to_plist_within(v as CFTypeRef, depth)?,
                    );
                }
                Plist::Dictionary(d)
            }
        })
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> CFTypeRef {
        create(Value::String(CString::new(text).unwrap()))
    }

    #[test]
    fn a_released_object_is_refused_not_read() {
        let a = s("NullDriver");
        assert_eq!(string(a).as_deref(), Some("NullDriver"));
        assert_eq!(retain_count(a), 1);
        release(a);
        assert_eq!(string(a), None, "released");
        assert_eq!(type_id(a), 0);
        release(a); // a second release is ignored
        assert_eq!(type_id(0x1234 as CFTypeRef), 0, "never an object");
        assert_eq!(type_id(boolean(true)), type_id::BOOLEAN);
    }

    #[test]
    fn dictionaries_hold_what_they_are_given_and_match_by_contents() {
        let d = create(Value::Dictionary(Mutex::new(Vec::new())));
        let k = s("IONameMatch");
        let v = s("NullDriver");
        assert!(dictionary_set(d, k, v, false));
        assert!(dictionary_set(d, k, k, true), "only_new leaves it");
        release(k);
        release(v);
        // The dictionary's references keep them.
        let key = constant_string(c"IONameMatch");
        assert_eq!(
            string(dictionary_get(d, key)).as_deref(),
            Some("NullDriver")
        );
        let replaced = s("Other");
        assert!(dictionary_set(d, key, replaced, false));
        release(replaced);
        assert_eq!(
            string(v),
            None,
            "the replaced value went with its last reference"
        );
        assert_eq!(string(dictionary_get(d, key)).as_deref(), Some("Other"));
        let p = to_plist(d).unwrap();
        assert_eq!(
            p.as_dictionary().unwrap()["IONameMatch"].as_string(),
            Some("Other")
        );
        let back = from_plist(&p);
        assert!(equal(back, d));
        dictionary_remove(d, key);
        assert!(dictionary_get(d, key).is_null());
        assert!(!equal(back, d));
        release(back);
        // A dictionary that holds itself is no property value.
        assert!(dictionary_set(d, key, d, false));
        assert_eq!(to_plist(d), None);
        dictionary_remove(d, key);
        release(d);
        assert!(!dictionary_set(d, key, key, false), "released dictionary");
    }

    #[test]
    fn numbers_compare_by_value() {
        let a = create(Value::Number(Number::Int(3)));
        let b = create(Value::Number(Number::Float(3.0)));
        assert!(equal(a, b));
        release(a);
        release(b);
    }
}
