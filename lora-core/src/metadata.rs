//! The `__metadata__` map of a safetensors file, and the `ss_*` keys sd-scripts writes (§1.6).
//!
//! sd-scripts stores every value through Python's `str()`, so the typed setters here reproduce
//! Python's spellings: `32.0` for a float, `True`/`False`, `None`, and `json.dumps` text (with
//! `", "` and `": "` separators) for `ss_network_args`.

use std::collections::HashMap;

/// A Python value as sd-scripts puts it into metadata (through `str()` or `json.dumps`).
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    /// `None` (`null` in JSON).
    None,
    /// A bool: `True`/`False` (`true`/`false` in JSON).
    Bool(bool),
    /// An int.
    Int(i64),
    /// A float, printed like Python's `repr(float)`.
    Float(f64),
    /// A string (quoted in JSON, bare through `str()`).
    Str(String),
}

impl PyValue {
    /// Python's `str(value)`.
    pub fn py_str(&self) -> String {
        match self {
            PyValue::None => "None".into(),
            PyValue::Bool(true) => "True".into(),
            PyValue::Bool(false) => "False".into(),
            PyValue::Int(i) => i.to_string(),
            PyValue::Float(f) => py_float_repr(*f),
            PyValue::Str(s) => s.clone(),
        }
    }

    /// Python's `json.dumps(value)` with default settings (`ensure_ascii=True`).
    pub fn json(&self) -> String {
        match self {
            PyValue::None => "null".into(),
            PyValue::Bool(b) => b.to_string(),
            PyValue::Int(i) => i.to_string(),
            PyValue::Float(f) if f.is_nan() => "NaN".into(),
            PyValue::Float(f) if f.is_infinite() => {
                if *f > 0.0 {
                    "Infinity".into()
                } else {
                    "-Infinity".into()
                }
            }
            PyValue::Float(f) => py_float_repr(*f),
            PyValue::Str(s) => py_json_string(s),
        }
    }
}

/// Python's `json.dumps(dict)` with default separators: `{"conv_dim": 4, "conv_alpha": 4}`.
pub fn py_json_dumps(entries: &[(&str, PyValue)]) -> String {
    let body: Vec<String> = entries
        .iter()
        .map(|(k, v)| format!("{}: {}", py_json_string(k), v.json()))
        .collect();
    format!("{{{}}}", body.join(", "))
}

/// A JSON string literal as Python's `json.dumps` writes it (ASCII only, `\uXXXX` escapes).
fn py_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{:04x}", u));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Python's `repr(float)` (which `str(float)` equals): shortest round-trip digits, `.0` on integral
/// values, exponent form below 1e-4 and from 1e16 up (`1e-05`, `1e+16`), `inf`, `nan`.
pub fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "d.ddde-5".
    let sci = format!("{:e}", x);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let neg = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if neg { "-" } else { "" };
    if !(-4..16).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        let m = if rest.is_empty() {
            first.to_string()
        } else {
            format!("{first}.{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{m}e{esign}{:02}", exp.abs());
    }
    let n = digits.len() as i32;
    if exp < 0 {
        let zeros = "0".repeat((-exp - 1) as usize);
        format!("{sign}0.{zeros}{digits}")
    } else if exp + 1 >= n {
        let zeros = "0".repeat((exp + 1 - n) as usize);
        format!("{sign}{digits}{zeros}.0")
    } else {
        let (a, b) = digits.split_at((exp + 1) as usize);
        format!("{sign}{a}.{b}")
    }
}

/// An ordered string → string map: the `__metadata__` of a safetensors file.
///
/// Insertion order is kept (and the file's order on read). Setting an existing key replaces its
/// value in place. Note that the safetensors crate writes the map through a `HashMap`, so the key
/// order inside a written header is not controlled (the reference tools share this, §1.4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: Vec<(String, String)>,
}

impl Metadata {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`, replacing an existing value in place; returns the old value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Option<String> {
        let key = key.into();
        let value = value.into();
        if let Some(slot) = self.entries.iter_mut().find(|(k, _)| *k == key) {
            return Some(std::mem::replace(&mut slot.1, value));
        }
        self.entries.push((key, value));
        None
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1)
    }

    /// Entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// Only the `ss_*` keys, which are what the sshs hashes cover (§1.5).
    pub fn ss_only(&self) -> Metadata {
        Metadata {
            entries: self
                .entries
                .iter()
                .filter(|(k, _)| k.starts_with("ss_"))
                .cloned()
                .collect(),
        }
    }

    /// A `HashMap` copy, as the safetensors crate takes it.
    pub fn to_hash_map(&self) -> HashMap<String, String> {
        self.entries.iter().cloned().collect()
    }

    /// Sets `key` to Python's `str(value)`.
    pub fn set_py(&mut self, key: &str, value: PyValue) -> &mut Self {
        self.insert(key, value.py_str());
        self
    }

    /// `ss_network_module`, e.g. `"networks.lora"`.
    pub fn set_network_module(&mut self, module: &str) -> &mut Self {
        self.set_py("ss_network_module", PyValue::Str(module.into()))
    }

    /// `ss_network_dim` from an int (`"64"`), as training and svd_merge write it.
    pub fn set_network_dim(&mut self, dim: i64) -> &mut Self {
        self.set_py("ss_network_dim", PyValue::Int(dim))
    }

    /// `ss_network_alpha` from a value: `PyValue::Float(32.0)` gives `"32.0"` (training),
    /// `PyValue::Int(4)` gives `"4"` (svd_merge), `PyValue::Str("Dynamic")` for resize.
    pub fn set_network_alpha(&mut self, alpha: PyValue) -> &mut Self {
        self.set_py("ss_network_alpha", alpha)
    }

    /// `ss_network_args = json.dumps(args)`, e.g. `{"conv_dim": 4, "conv_alpha": 4}`.
    pub fn set_network_args(&mut self, args: &[(&str, PyValue)]) -> &mut Self {
        self.insert("ss_network_args", py_json_dumps(args));
        self
    }

    /// `ss_v2`: `"True"`/`"False"`.
    pub fn set_v2(&mut self, v2: bool) -> &mut Self {
        self.set_py("ss_v2", PyValue::Bool(v2))
    }

    /// `ss_base_model_version`, e.g. `"sd_v1"`, `"sd_v2"`, `"sdxl_base_v1-0"`.
    pub fn set_base_model_version(&mut self, version: &str) -> &mut Self {
        self.set_py("ss_base_model_version", PyValue::Str(version.into()))
    }

    /// `build_minimum_network_metadata` (train_util.py): the keys every tool writes, in its order.
    /// `v2` and `base_model_version` are skipped when `None`, like the reference.
    pub fn minimum_network(
        v2: Option<&str>,
        base_model_version: Option<&str>,
        network_module: &str,
        network_dim: &str,
        network_alpha: &str,
        network_args: Option<&[(&str, PyValue)]>,
    ) -> Metadata {
        let mut m = Metadata::new();
        m.insert("ss_network_module", network_module);
        m.insert("ss_network_dim", network_dim);
        m.insert("ss_network_alpha", network_alpha);
        if let Some(v2) = v2 {
            m.insert("ss_v2", v2);
        }
        if let Some(b) = base_model_version {
            m.insert("ss_base_model_version", b);
        }
        if let Some(args) = network_args {
            m.set_network_args(args);
        }
        m
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Metadata {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        let mut m = Metadata::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_spellings() {
        // Values checked against CPython 3.10 repr().
        let cases: &[(f64, &str)] = &[
            (32.0, "32.0"),
            (1.0, "1.0"),
            (0.5, "0.5"),
            (0.6666666865348816, "0.6666666865348816"),
            (2.0f32 as f64 / 3.0, "0.6666666666666666"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (123456789012345.0, "123456789012345.0"),
            (1.5e-7, "1.5e-07"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (f64::NAN, "nan"),
            (f64::INFINITY, "inf"),
        ];
        for (x, s) in cases {
            assert_eq!(py_float_repr(*x), *s, "{x}");
        }
        // alpha as f32 printed through Python float: float32(0.1) -> 0.10000000149011612
        assert_eq!(py_float_repr(0.1f32 as f64), "0.10000000149011612");
    }

    #[test]
    fn python_json_dumps_spacing() {
        let s = py_json_dumps(&[
            ("conv_dim", PyValue::Int(4)),
            ("conv_alpha", PyValue::Int(4)),
        ]);
        assert_eq!(s, r#"{"conv_dim": 4, "conv_alpha": 4}"#);
        let s = py_json_dumps(&[
            ("conv_dim", PyValue::Str("8".into())),
            ("conv_alpha", PyValue::Str("8.0".into())),
            ("dropout", PyValue::None),
        ]);
        assert_eq!(
            s,
            r#"{"conv_dim": "8", "conv_alpha": "8.0", "dropout": null}"#
        );
        assert_eq!(PyValue::Str("é\"".into()).json(), r#""\u00e9\"""#);
    }

    #[test]
    fn insertion_order_and_replace() {
        let mut m = Metadata::new();
        m.set_network_module("networks.lora").set_network_dim(64);
        m.set_network_alpha(PyValue::Float(32.0)).set_v2(false);
        m.insert("modelspec.title", "x");
        m.set_network_dim(8);
        let keys: Vec<_> = m.keys().collect();
        assert_eq!(
            keys,
            [
                "ss_network_module",
                "ss_network_dim",
                "ss_network_alpha",
                "ss_v2",
                "modelspec.title"
            ]
        );
        assert_eq!(m.get("ss_network_dim"), Some("8"));
        assert_eq!(m.get("ss_network_alpha"), Some("32.0"));
        assert_eq!(m.get("ss_v2"), Some("False"));
        assert_eq!(m.ss_only().len(), 4);
        assert_eq!(m.remove("modelspec.title").as_deref(), Some("x"));
    }

    #[test]
    fn minimum_metadata_like_svd_merge() {
        let args = [
            ("conv_dim", PyValue::Int(5)),
            ("conv_alpha", PyValue::Int(5)),
        ];
        let m =
            Metadata::minimum_network(None, Some("sd_v1"), "networks.lora", "4", "4", Some(&args));
        assert_eq!(
            m.get("ss_network_args"),
            Some(r#"{"conv_dim": 5, "conv_alpha": 5}"#)
        );
        assert!(!m.contains_key("ss_v2"));
    }
}
