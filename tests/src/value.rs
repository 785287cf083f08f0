//! Number, flag and errno parsing for case files (the "Numbers" and "Flags" rules of the
//! case schema).
//!
//! Every function returns a descriptive `Err(String)` instead of panicking, so a malformed
//! case file turns into a failing case with a readable message.

use toml::Value;
use vfio_core::Errno;

/// A symbolic flag table: `(name, value)` pairs.
pub type FlagTable = &'static [(&'static str, u64)];

/// `VFIO_IOMMU_MAP_DMA` flag names.
pub const MAP_DMA_FLAGS: FlagTable = &[("READ", 0x1), ("WRITE", 0x2), ("VADDR", 0x4)];
/// `VFIO_IOMMU_UNMAP_DMA` flag names.
pub const UNMAP_DMA_FLAGS: FlagTable = &[("GET_DIRTY_BITMAP", 0x1), ("ALL", 0x2), ("VADDR", 0x4)];
/// `VFIO_IOMMU_DIRTY_PAGES` flag names.
pub const DIRTY_PAGES_FLAGS: FlagTable = &[("START", 0x1), ("STOP", 0x2), ("GET_BITMAP", 0x4)];
/// `VFIO_DEVICE_SET_IRQS` flag names.
pub const SET_IRQS_FLAGS: FlagTable = &[
    ("DATA_NONE", 0x1),
    ("DATA_BOOL", 0x2),
    ("DATA_EVENTFD", 0x4),
    ("ACTION_MASK", 0x8),
    ("ACTION_UNMASK", 0x10),
    ("ACTION_TRIGGER", 0x20),
];
/// No symbolic names: only numbers are accepted.
pub const NO_FLAGS: FlagTable = &[];

/// Parses a number written as text: decimal or `0x` hexadecimal, surrounding blanks allowed.
pub fn parse_u64_str(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let parsed = if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(&hex.replace('_', ""), 16)
    } else {
        t.replace('_', "").parse::<u64>()
    };
    parsed.map_err(|_| format!("`{text}` is not a decimal or 0x-hexadecimal u64"))
}

/// Parses a schema number: a non-negative TOML integer or a string holding a u64.
pub fn as_u64(value: &Value) -> Result<u64, String> {
    match value {
        Value::Integer(i) => {
            u64::try_from(*i).map_err(|_| format!("{i} is negative where a u64 is expected"))
        }
        Value::String(s) => parse_u64_str(s),
        other => Err(format!("expected a number, found {}", describe(other))),
    }
}

/// Parses a signed number: a TOML integer or a string (`-1`, `0x…`).
pub fn as_i64(value: &Value) -> Result<i64, String> {
    match value {
        Value::Integer(i) => Ok(*i),
        Value::String(s) => {
            let t = s.trim();
            if let Some(neg) = t.strip_prefix('-') {
                let v = parse_u64_str(neg)?;
                i64::try_from(v)
                    .map(|v| -v)
                    .map_err(|_| format!("`{s}` does not fit an i64"))
            } else {
                let v = parse_u64_str(t)?;
                // Accept 64-bit patterns (e.g. "0xffffffffffffffff") as their two's complement.
                Ok(v as i64)
            }
        }
        other => Err(format!("expected a number, found {}", describe(other))),
    }
}

/// Parses a number that must fit in a `u32`.
pub fn as_u32(value: &Value) -> Result<u32, String> {
    let v = as_u64(value)?;
    u32::try_from(v).map_err(|_| format!("{v:#x} does not fit in 32 bits"))
}

/// Parses flags: an integer, or `|`-separated symbolic names from `table` and numbers.
pub fn as_flags(value: &Value, table: FlagTable) -> Result<u64, String> {
    match value {
        Value::Integer(_) => as_u64(value),
        Value::String(s) => {
            let mut bits = 0u64;
            for token in s.split('|') {
                let token = token.trim();
                if token.is_empty() {
                    if s.trim().is_empty() {
                        continue;
                    }
                    return Err(format!("empty flag token in `{s}`"));
                }
                if let Some((_, v)) = table.iter().find(|(name, _)| *name == token) {
                    bits |= v;
                } else if token.starts_with(|c: char| c.is_ascii_digit()) {
                    bits |= parse_u64_str(token)?;
                } else {
                    let known: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
                    return Err(format!(
                        "unknown flag `{token}` (known: {})",
                        if known.is_empty() {
                            "numbers only".to_string()
                        } else {
                            known.join(", ")
                        }
                    ));
                }
            }
            Ok(bits)
        }
        other => Err(format!("expected flags, found {}", describe(other))),
    }
}

/// Parses an errno name such as `"EINVAL"`.
pub fn as_errno(value: &Value) -> Result<Errno, String> {
    match value {
        Value::String(s) => {
            Errno::from_name(s.trim()).ok_or_else(|| format!("unknown errno name `{s}`"))
        }
        Value::Integer(i) => i32::try_from(*i)
            .ok()
            .and_then(Errno::from_code)
            .ok_or_else(|| format!("unknown errno number {i}")),
        other => Err(format!("expected an errno name, found {}", describe(other))),
    }
}

/// Reads a boolean.
pub fn as_bool(value: &Value) -> Result<bool, String> {
    value
        .as_bool()
        .ok_or_else(|| format!("expected a boolean, found {}", describe(value)))
}

/// Reads a string.
pub fn as_str(value: &Value) -> Result<&str, String> {
    value
        .as_str()
        .ok_or_else(|| format!("expected a string, found {}", describe(value)))
}

/// Reads an array.
pub fn as_array(value: &Value) -> Result<&Vec<Value>, String> {
    value
        .as_array()
        .ok_or_else(|| format!("expected an array, found {}", describe(value)))
}

/// Reads a table.
pub fn as_table(value: &Value) -> Result<&toml::Table, String> {
    value
        .as_table()
        .ok_or_else(|| format!("expected a table, found {}", describe(value)))
}

/// Reads `[a, b]` as a pair of u64.
pub fn as_pair(value: &Value) -> Result<(u64, u64), String> {
    let items = as_array(value)?;
    if items.len() != 2 {
        return Err(format!(
            "expected a pair [a, b], found {} items",
            items.len()
        ));
    }
    Ok((as_u64(&items[0])?, as_u64(&items[1])?))
}

/// Looks up `key` in `table`, with a "missing key" message naming `what`.
pub fn get<'a>(table: &'a toml::Table, key: &str, what: &str) -> Result<&'a Value, String> {
    table
        .get(key)
        .ok_or_else(|| format!("{what}: missing `{key}`"))
}

/// Short description of a TOML value for error messages.
pub fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("string \"{s}\""),
        Value::Integer(i) => format!("integer {i}"),
        Value::Float(f) => format!("float {f}"),
        Value::Boolean(b) => format!("boolean {b}"),
        Value::Datetime(d) => format!("datetime {d}"),
        Value::Array(a) => format!("array of {}", a.len()),
        Value::Table(_) => "table".to_string(),
    }
}

/// Renders a TOML value compactly for messages (integers ≥ 4096 in hexadecimal).
pub fn render(value: &Value) -> String {
    match value {
        Value::Integer(i) if *i >= 4096 => format!("{i:#x}"),
        Value::String(s) => match parse_u64_str(s) {
            Ok(v) if v >= 4096 => format!("{v:#x}"),
            Ok(v) => v.to_string(),
            Err(_) => format!("\"{s}\""),
        },
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(render).collect();
            format!("[{}]", inner.join(", "))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(as_u64(&Value::Integer(42)), Ok(42));
        assert_eq!(as_u64(&Value::String("0x10".into())), Ok(16));
        assert_eq!(
            as_u64(&Value::String("0xffffffffffffffff".into())),
            Ok(u64::MAX)
        );
        assert_eq!(as_u64(&Value::String("4096".into())), Ok(4096));
        assert!(as_u64(&Value::Integer(-1)).is_err());
        assert!(as_u64(&Value::String("zz".into())).is_err());
        assert!(as_u64(&Value::Boolean(true)).is_err());
        assert_eq!(as_i64(&Value::Integer(-1)), Ok(-1));
        assert_eq!(as_i64(&Value::String("-5".into())), Ok(-5));
        assert!(as_u32(&Value::String("0x100000000".into())).is_err());
    }

    #[test]
    fn flags() {
        let v = Value::String("READ|WRITE".into());
        assert_eq!(as_flags(&v, MAP_DMA_FLAGS), Ok(3));
        let v = Value::String("READ|0x8".into());
        assert_eq!(as_flags(&v, MAP_DMA_FLAGS), Ok(9));
        let v = Value::String("DATA_NONE|ACTION_TRIGGER|0x40".into());
        assert_eq!(as_flags(&v, SET_IRQS_FLAGS), Ok(0x61));
        assert_eq!(as_flags(&Value::Integer(5), NO_FLAGS), Ok(5));
        assert!(as_flags(&Value::String("BOGUS".into()), MAP_DMA_FLAGS).is_err());
        assert_eq!(
            as_flags(&Value::String(String::new()), MAP_DMA_FLAGS),
            Ok(0)
        );
    }

    #[test]
    fn errnos() {
        assert_eq!(as_errno(&Value::String("EINVAL".into())), Ok(Errno::EINVAL));
        assert!(as_errno(&Value::String("EWHAT".into())).is_err());
    }
}
