//! One entry of `IOKitPersonalities`: what a driver matches and how it runs.

use driverkit_wire::classes;
use plist::Value;

/// The match category of personalities that do not name one.
pub const DEFAULT_MATCH_CATEGORY: &str = "IODefaultMatchCategory";

/// A validated personality.
#[derive(Debug, Clone, PartialEq)]
pub struct Personality {
    /// Its key in `IOKitPersonalities`.
    pub name: String,
    /// `CFBundleIdentifier`: the bundle the personality belongs to.
    pub bundle_identifier: String,
    /// `IOClass`: the system class that gives the service its base behaviour.
    pub io_class: String,
    /// `IOUserClass`: the dext's class to instantiate.
    pub user_class: String,
    /// `IOUserServerName`: the process (user server) that hosts the service.
    pub server_name: String,
    /// `IOProviderClass`: the class the provider must be, or derive from.
    pub provider_class: String,
    /// `IOProbeScore`, 0 when absent.
    pub probe_score: i64,
    /// `IOMatchCategory`; one winner per category per provider.
    pub match_category: String,
    /// `IOUserServerOneProcess`: share one process per server name.
    pub one_process: bool,
    /// The whole dictionary: matching keys, and the properties the service
    /// starts with.
    pub properties: plist::Dictionary,
}

type Problem = (Option<String>, String);

fn at(key: &str, problem: impl Into<String>) -> Problem {
    (Some(key.to_owned()), problem.into())
}

/// `a string`, `an integer`...: for "expected X, found Y" messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "an array",
        Value::Dictionary(_) => "a dictionary",
        Value::Boolean(_) => "a boolean",
        Value::Data(_) => "data",
        Value::Date(_) => "a date",
        Value::Real(_) => "a real number",
        Value::Integer(_) => "an integer",
        Value::String(_) => "a string",
        Value::Uid(_) => "a UID",
        _ => "an unknown value",
    }
}

fn string(d: &plist::Dictionary, key: &str) -> Result<String, Problem> {
    match d.get(key) {
        None => Err(at(key, "missing")),
        Some(Value::String(s)) if s.is_empty() => Err(at(key, "empty string")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(at(
            key,
            format!("expected a string, found {}", type_name(other)),
        )),
    }
}

fn system_class(d: &plist::Dictionary, key: &str) -> Result<String, Problem> {
    let class = string(d, key)?;
    if let Some(system) = classes::canonical(&class) {
        // Apple's names stand for the system's own classes.
        return Ok(system.to_owned());
    }
    if let Some(family) = classes::family_to_come(&class) {
        return Err(at(
            key,
            format!(
                "{class:?} belongs to DriverKit's {family} family, which this system does not implement yet"
            ),
        ));
    }
    let known: Vec<_> = classes::all().collect();
    Err(at(
        key,
        format!(
            "unknown class {class:?}; the system implements {}",
            known.join(", ")
        ),
    ))
}

/// A string, or an array of strings (IONameMatch, IOResourceMatch).
fn strings(v: &Value, key: &str) -> Result<(), Problem> {
    match v {
        Value::String(_) => Ok(()),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if !matches!(item, Value::String(_)) {
                    return Err(at(
                        key,
                        format!("item {i}: expected a string, found {}", type_name(item)),
                    ));
                }
            }
            Ok(())
        }
        other => Err(at(
            key,
            format!(
                "expected a string or an array of strings, found {}",
                type_name(other)
            ),
        )),
    }
}

impl Personality {
    pub(crate) fn parse(
        name: &str,
        value: &Value,
        bundle_id: &str,
    ) -> Result<Personality, Problem> {
        let Value::Dictionary(d) = value else {
            return Err((
                None,
                format!("expected a dictionary, found {}", type_name(value)),
            ));
        };
        let bundle_identifier = string(d, "CFBundleIdentifier")?;
        if bundle_identifier != bundle_id {
            return Err(at(
                "CFBundleIdentifier",
                format!(
                    "expected the bundle's identifier {bundle_id:?}, found {bundle_identifier:?}"
                ),
            ));
        }
        let io_class = system_class(d, "IOClass")?;
        let user_class = string(d, "IOUserClass")?;
        let server_name = string(d, "IOUserServerName")?;
        let provider_class = system_class(d, "IOProviderClass")?;
        let probe_score = match d.get("IOProbeScore") {
            None => 0,
            Some(Value::Integer(i)) => i
                .as_signed()
                .ok_or_else(|| at("IOProbeScore", "integer out of range"))?,
            Some(other) => {
                return Err(at(
                    "IOProbeScore",
                    format!("expected an integer, found {}", type_name(other)),
                ))
            }
        };
        let match_category = match d.get("IOMatchCategory") {
            None => DEFAULT_MATCH_CATEGORY.to_owned(),
            Some(_) => string(d, "IOMatchCategory")?,
        };
        let one_process = match d.get("IOUserServerOneProcess") {
            None => false,
            Some(Value::Boolean(b)) => *b,
            Some(other) => {
                return Err(at(
                    "IOUserServerOneProcess",
                    format!("expected a boolean, found {}", type_name(other)),
                ))
            }
        };
        if let Some(v) = d.get("IOPropertyMatch") {
            match v {
                Value::Dictionary(_) => {}
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if !matches!(item, Value::Dictionary(_)) {
                            return Err(at(
                                "IOPropertyMatch",
                                format!(
                                    "item {i}: expected a dictionary, found {}",
                                    type_name(item)
                                ),
                            ));
                        }
                    }
                }
                other => {
                    return Err(at(
                        "IOPropertyMatch",
                        format!(
                            "expected a dictionary or an array of dictionaries, found {}",
                            type_name(other)
                        ),
                    ))
                }
            }
        }
        for key in ["IONameMatch", "IOResourceMatch"] {
            if let Some(v) = d.get(key) {
                strings(v, key)?;
            }
        }
        Ok(Personality {
            name: name.to_owned(),
            bundle_identifier,
            io_class,
            user_class,
            server_name,
            provider_class,
            probe_score,
            match_category,
            one_process,
            properties: d.clone(),
        })
    }
}
