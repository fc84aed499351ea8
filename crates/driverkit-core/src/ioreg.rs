//! The registry as ioreg shows it: an archive (`ioreg -a`, macOS's layout),
//! the tree parsed back from it, and the text rendering.
//!
//! The daemon sends the archive; `driverkit ioreg` parses it and renders.
//! Each node is a dictionary of the entry's properties plus these keys:
//! `IOObjectClass`, `IORegistryEntryID`, `IORegistryEntryName`,
//! `IORegistryEntryChildren`, and ours: `IOObjectClassChain`,
//! `IOServiceState` (a dictionary of booleans) and `IOUserServerPID`.

use std::fmt::Write;

use plist::{Dictionary, Value};
use serde::Serialize;

use crate::registry::{EntryId, Registry, State};

const CLASS: &str = "IOObjectClass";
const ID: &str = "IORegistryEntryID";
const NAME: &str = "IORegistryEntryName";
const CHILDREN: &str = "IORegistryEntryChildren";
const CHAIN: &str = "IOObjectClassChain";
const STATE: &str = "IOServiceState";
const PID: &str = "IOUserServerPID";

/// The whole registry, from its root, as an `ioreg -a` archive.
pub fn archive(registry: &Registry) -> Value {
    fn node(r: &Registry, e: &crate::registry::Entry) -> Value {
        let mut d = e.properties.clone();
        d.insert(CLASS.into(), e.class().into());
        d.insert(ID.into(), Value::Integer(e.id.raw().into()));
        d.insert(NAME.into(), e.name.clone().into());
        d.insert(
            CHAIN.into(),
            Value::Array(e.class_chain.iter().map(|c| c.clone().into()).collect()),
        );
        let mut s = Dictionary::new();
        s.insert("registered".into(), e.state.registered.into());
        s.insert("matched".into(), e.state.matched.into());
        s.insert("active".into(), e.state.active.into());
        s.insert("terminating".into(), e.state.terminating.into());
        d.insert(STATE.into(), Value::Dictionary(s));
        if let Some(h) = &e.hosting {
            d.insert(PID.into(), Value::Integer(h.pid.into()));
        }
        let children: Vec<Value> = e
            .clients
            .iter()
            .filter_map(|c| r.get(*c))
            .map(|c| node(r, c))
            .collect();
        if !children.is_empty() {
            d.insert(CHILDREN.into(), Value::Array(children));
        }
        Value::Dictionary(d)
    }
    let roots: Vec<Value> = registry
        .iter()
        .filter(|e| e.provider.is_none())
        .map(|e| node(registry, e))
        .collect();
    roots
        .into_iter()
        .next()
        .unwrap_or(Value::Dictionary(Dictionary::new()))
}

/// One registry entry, parsed from an archive.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    pub id: EntryId,
    pub name: String,
    pub class: String,
    pub class_chain: Vec<String>,
    pub state: State,
    pub pid: Option<u32>,
    #[serde(serialize_with = "properties_json")]
    pub properties: Dictionary,
    pub children: Vec<Node>,
}

/// What is wrong with a registry archive (`ioreg -a`'s plist).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    #[error("a registry node must be a dictionary")]
    NotADictionary,
    /// A node lacks a key every node has, or holds it with the wrong type.
    #[error("node without {0}")]
    Missing(&'static str),
}

impl From<ArchiveError> for String {
    fn from(e: ArchiveError) -> String {
        e.to_string()
    }
}

impl Node {
    /// Parses an archive node; errors name the key that is wrong.
    pub fn from_archive(v: &Value) -> Result<Node, ArchiveError> {
        let d = v.as_dictionary().ok_or(ArchiveError::NotADictionary)?;
        let string = |k: &'static str| {
            d.get(k)
                .and_then(Value::as_string)
                .map(str::to_owned)
                .ok_or(ArchiveError::Missing(k))
        };
        let id = d
            .get(ID)
            .and_then(Value::as_unsigned_integer)
            .map(EntryId::from_raw)
            .ok_or(ArchiveError::Missing(ID))?;
        let flag = |k: &str| {
            d.get(STATE)
                .and_then(Value::as_dictionary)
                .and_then(|s| s.get(k))
                .and_then(Value::as_boolean)
                .unwrap_or(false)
        };
        let mut properties = d.clone();
        for k in [CLASS, ID, NAME, CHILDREN, CHAIN, STATE, PID] {
            properties.remove(k);
        }
        let children = match d.get(CHILDREN) {
            Some(Value::Array(a)) => a.iter().map(Node::from_archive).collect::<Result<_, _>>()?,
            _ => Vec::new(),
        };
        Ok(Node {
            id,
            name: string(NAME)?,
            class: string(CLASS)?,
            class_chain: match d.get(CHAIN) {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(Value::as_string)
                    .map(str::to_owned)
                    .collect(),
                _ => vec![string(CLASS)?],
            },
            state: State {
                registered: flag("registered"),
                matched: flag("matched"),
                active: flag("active"),
                terminating: flag("terminating"),
            },
            pid: d
                .get(PID)
                .and_then(Value::as_unsigned_integer)
                .map(|p| p as u32),
            properties,
            children,
        })
    }

    /// This node and every node below it, depth first.
    pub fn walk(&self) -> Vec<&Node> {
        let mut out = vec![self];
        for c in &self.children {
            out.extend(c.walk());
        }
        out
    }

    /// True when the node is an instance of `class` or a subclass.
    pub fn is_kind_of(&self, class: &str) -> bool {
        self.class_chain.iter().any(|c| c == class)
    }

    /// The angle-bracket summary ioreg prints after the name.
    pub fn summary(&self) -> String {
        let s = &self.state;
        let mut out = format!(
            "<class {}, id {:#x}, {}registered, {}matched, {}",
            self.class,
            self.id,
            if s.registered { "" } else { "!" },
            if s.matched { "" } else { "!" },
            if s.active { "active" } else { "inactive" },
        );
        if s.terminating {
            out.push_str(", terminating");
        }
        if let Some(pid) = self.pid {
            let _ = write!(out, ", pid {pid}");
        }
        out.push('>');
        out
    }
}

/// What `driverkit ioreg` shows.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `-l`: properties of every object.
    pub all_properties: bool,
    /// `-c`: properties of objects of this class (or subclasses).
    pub class: Option<String>,
    /// `-n`: properties of objects with this name.
    pub name: Option<String>,
    /// `-r`: only the subtrees rooted at objects selected by `-c`/`-n`.
    pub rooted: bool,
}

impl Options {
    fn selects(&self, n: &Node) -> bool {
        self.class.as_deref().is_some_and(|c| n.is_kind_of(c))
            || self.name.as_deref().is_some_and(|m| n.name == m)
    }
    fn shows_properties(&self, n: &Node) -> bool {
        self.all_properties || self.selects(n)
    }
    /// The roots to print: the whole tree, or with `-r` the selected
    /// subtrees.
    pub fn roots<'a>(&self, root: &'a Node) -> Vec<&'a Node> {
        if self.rooted && (self.class.is_some() || self.name.is_some()) {
            let mut out = Vec::new();
            collect_rooted(root, self, &mut out);
            out
        } else {
            vec![root]
        }
    }
}

fn collect_rooted<'a>(n: &'a Node, o: &Options, out: &mut Vec<&'a Node>) {
    if o.selects(n) {
        out.push(n);
    } else {
        for c in &n.children {
            collect_rooted(c, o, out);
        }
    }
}

/// Renders like macOS ioreg: each level indents by two columns, and a bar
/// continues down a column while the object there has siblings still to come.
pub fn render(root: &Node, o: &Options) -> String {
    let mut out = String::new();
    for r in o.roots(root) {
        render_node(r, "", false, o, &mut out);
    }
    out
}

fn render_node(n: &Node, prefix: &str, later_sibling: bool, o: &Options, out: &mut String) {
    let _ = writeln!(out, "{prefix}+-o {}  {}", n.name, n.summary());
    let below = format!("{prefix}{}", if later_sibling { "| " } else { "  " });
    if o.shows_properties(n) {
        let props = format!("{below}{}", if n.children.is_empty() { "  " } else { "| " });
        let _ = writeln!(out, "{props}{{");
        for (k, v) in &n.properties {
            let _ = writeln!(out, "{props}  {k:?} = {}", format_value(v));
        }
        let _ = writeln!(out, "{props}}}");
        let _ = writeln!(out, "{}", props.trim_end());
    }
    for (i, c) in n.children.iter().enumerate() {
        render_node(c, &below, i + 1 < n.children.len(), o, out);
    }
}

/// ioreg's property syntax: `"s"`, `12`, `Yes`, `<0a0b>`, `(a,b)`, `{"k"=v}`.
pub fn format_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Integer(i) => i.to_string(),
        Value::Real(r) => r.to_string(),
        Value::Boolean(b) => (if *b { "Yes" } else { "No" }).into(),
        Value::Data(d) => format!("<{}>", driverkit_wire::hex::encode(d, "")),
        Value::Date(d) => d.to_xml_format(),
        Value::Array(a) => format!(
            "({})",
            a.iter().map(format_value).collect::<Vec<_>>().join(",")
        ),
        Value::Dictionary(d) => {
            format!(
                "{{{}}}",
                d.iter()
                    .map(|(k, v)| format!("{k:?}={}", format_value(v)))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        }
        _ => "?".into(),
    }
}

/// A plist value as JSON: data becomes `{"$data": "hex"}`, dates strings.
pub fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::String(s) => J::String(s.clone()),
        Value::Integer(i) => match (i.as_signed(), i.as_unsigned()) {
            (Some(s), _) => J::from(s),
            (None, Some(u)) => J::from(u),
            _ => J::Null,
        },
        Value::Real(r) => serde_json::Number::from_f64(*r)
            .map(J::Number)
            .unwrap_or(J::Null),
        Value::Boolean(b) => J::Bool(*b),
        Value::Data(d) => {
            serde_json::json!({ "$data": driverkit_wire::hex::encode(d, "") })
        }
        Value::Date(d) => J::String(d.to_xml_format()),
        Value::Array(a) => J::Array(a.iter().map(to_json).collect()),
        Value::Dictionary(d) => J::Object(d.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
        _ => J::Null,
    }
}

fn properties_json<S: serde::Serializer>(d: &Dictionary, s: S) -> Result<S::Ok, S::Error> {
    to_json(&Value::Dictionary(d.clone())).serialize(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_roundtrips_and_renders_like_ioreg() {
        let mut r = Registry::new();
        let root = r.insert("Root", "IORegistryEntry", Dictionary::new(), None);
        let a = r.insert("A", "IOService", Dictionary::new(), Some(root));
        let mut props = Dictionary::new();
        props.insert("Greeting".into(), "hi".into());
        let a1 = r.insert("A1", "IOUserService", props, Some(a));
        r.insert("B", "IOVirtualDevice", Dictionary::new(), Some(root));
        for id in [root, a, a1] {
            let e = r.get_mut(id).unwrap();
            e.state.registered = true;
            e.state.active = true;
        }
        let node = Node::from_archive(&archive(&r)).unwrap();
        assert_eq!(node.walk().len(), 4);
        let text = render(
            &node,
            &Options {
                class: Some("IOUserService".into()),
                ..Default::default()
            },
        );
        let expected = "\
+-o Root  <class IORegistryEntry, id 0x100000100, registered, !matched, active>
  +-o A  <class IOService, id 0x100000101, registered, !matched, active>
  | +-o A1  <class IOUserService, id 0x100000102, registered, !matched, active>
  |     {
  |       \"Greeting\" = \"hi\"
  |     }
  |
  +-o B  <class IOVirtualDevice, id 0x100000103, !registered, !matched, inactive>
";
        assert_eq!(text, expected);
        let rooted = render(
            &node,
            &Options {
                class: Some("IOService".into()),
                rooted: true,
                ..Default::default()
            },
        );
        assert!(rooted.starts_with("+-o A  "), "{rooted}");
        assert!(rooted.contains("+-o B  "), "{rooted}");
        assert!(!rooted.contains("Root"), "{rooted}");
    }

    #[test]
    fn json_keeps_types() {
        let mut d = Dictionary::new();
        d.insert("n".into(), Value::Integer(5.into()));
        d.insert("d".into(), Value::Data(vec![0xde, 0xad]));
        let j = to_json(&Value::Dictionary(d));
        assert_eq!(j, serde_json::json!({"n": 5, "d": {"$data": "dead"}}));
    }
}
