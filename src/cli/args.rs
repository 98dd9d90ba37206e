//! Hand-rolled argument parsing shared by the subcommands.
//!
//! Each subcommand declares its flags as [`Flag`]s; parsing accepts `--flag value` and
//! `--flag=value`, collects repeated flags in order, and rejects an unknown flag by name.
//! `--help`/`-h` is always accepted and reported as [`Parsed::help`].

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};

/// Default broker address for every subcommand.
pub const BOOTSTRAP_DEFAULT: &str = "127.0.0.1:9092";

/// One flag a subcommand accepts.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    /// Spellings; the first is the canonical name used to look the flag up.
    pub names: &'static [&'static str],
    /// True if the flag takes a value.
    pub takes_value: bool,
}

/// `--bootstrap-server`/`-b`, accepted by every subcommand.
pub const BOOTSTRAP: Flag = Flag { names: &["--bootstrap-server", "-b"], takes_value: true };

/// Shorthand for a flag that takes a value.
pub const fn value(names: &'static [&'static str]) -> Flag {
    Flag { names, takes_value: true }
}

/// Shorthand for a flag without a value.
pub const fn switch(names: &'static [&'static str]) -> Flag {
    Flag { names, takes_value: false }
}

/// The result of parsing.
#[derive(Debug, Default)]
pub struct Parsed {
    /// True if `--help` or `-h` was given.
    pub help: bool,
    /// Arguments that are not flags, in order.
    pub positional: Vec<String>,
    /// Values by canonical flag name, in the order given (switches get an empty value).
    values: BTreeMap<&'static str, Vec<String>>,
}

impl Parsed {
    /// True if the flag was given.
    pub fn has(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// The last value of a flag.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).and_then(|v| v.last()).map(|s| s.as_str())
    }

    /// Every value of a repeatable flag, in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.values.get(name).cloned().unwrap_or_default()
    }

    /// The value of a flag parsed as `T`, or `default`.
    pub fn parse_or<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(s) => s.parse().map_err(|e| anyhow!("invalid value {s:?} for {name}: {e}")),
        }
    }

    /// The value of a flag that must be given.
    pub fn required(&self, name: &str) -> Result<&str> {
        self.get(name).ok_or_else(|| anyhow!("missing required flag {name}"))
    }

    /// The bootstrap servers, or the default.
    pub fn bootstrap(&self) -> &str {
        self.get(BOOTSTRAP.names[0]).unwrap_or(BOOTSTRAP_DEFAULT)
    }
}

/// Parses `args` against `flags` (plus `--help`).
pub fn parse(args: &[String], flags: &[Flag]) -> Result<Parsed> {
    let mut parsed = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--help" || arg == "-h" {
            parsed.help = true;
            continue;
        }
        if arg == "--" {
            parsed.positional.extend(args[i..].iter().cloned());
            break;
        }
        if !arg.starts_with('-') || arg == "-" {
            parsed.positional.push(arg.clone());
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let flag = flags
            .iter()
            .find(|f| f.names.contains(&name))
            .ok_or_else(|| anyhow!("unknown flag {name} (try --help)"))?;
        let value = if flag.takes_value {
            match inline {
                Some(v) => v,
                None => {
                    let v = args.get(i).with_context(|| format!("flag {name} needs a value"))?;
                    i += 1;
                    v.clone()
                }
            }
        } else {
            if inline.is_some() {
                bail!("flag {name} takes no value");
            }
            String::new()
        };
        parsed.values.entry(flag.names[0]).or_default().push(value);
    }
    Ok(parsed)
}

/// Parses `--acks 0|1|all|-1`.
pub fn parse_acks(s: &str) -> Result<i16> {
    match s {
        "all" | "-1" => Ok(-1),
        "0" => Ok(0),
        "1" => Ok(1),
        _ => bail!("invalid value {s:?} for --acks (expected 0, 1 or all)"),
    }
}

/// Parses `k=v`.
pub fn parse_key_value(s: &str, flag: &str) -> Result<(String, String)> {
    let (k, v) = s.split_once('=').ok_or_else(|| anyhow!("invalid value {s:?} for {flag} (expected key=value)"))?;
    if k.is_empty() {
        bail!("invalid value {s:?} for {flag}: empty key");
    }
    Ok((k.to_string(), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    const FLAGS: &[Flag] = &[BOOTSTRAP, value(&["--topic", "-t"]), value(&["--config"]), switch(&["--from-beginning"])];

    #[test]
    fn parses_values_switches_and_positionals() {
        // Proves both value spellings, aliases, repeats and positionals.
        let p = parse(
            &strings(&[
                "create",
                "-b",
                "h:1",
                "--topic=t",
                "--config",
                "a=1",
                "--config",
                "b=2",
                "--from-beginning",
                "x",
            ]),
            FLAGS,
        )
        .unwrap();
        assert_eq!(p.positional, strings(&["create", "x"]));
        assert_eq!(p.bootstrap(), "h:1");
        assert_eq!(p.get("--topic"), Some("t"));
        assert_eq!(p.all("--config"), strings(&["a=1", "b=2"]));
        assert!(p.has("--from-beginning"));
        assert!(!p.help);
    }

    #[test]
    fn rejects_unknown_flags_by_name_and_missing_values() {
        // Proves the error names the offending flag.
        let e = parse(&strings(&["--nope"]), FLAGS).unwrap_err();
        assert!(e.to_string().contains("--nope"), "{e}");
        let e = parse(&strings(&["--topic"]), FLAGS).unwrap_err();
        assert!(e.to_string().contains("--topic"), "{e}");
        assert!(parse(&strings(&["--from-beginning=1"]), FLAGS).is_err());
        assert!(parse(&strings(&["--help"]), FLAGS).unwrap().help);
        assert_eq!(parse(&[], FLAGS).unwrap().bootstrap(), BOOTSTRAP_DEFAULT);
    }

    #[test]
    fn parses_acks_and_key_values() {
        // Proves the accepted spellings of --acks and k=v.
        assert_eq!(parse_acks("all").unwrap(), -1);
        assert_eq!(parse_acks("1").unwrap(), 1);
        assert!(parse_acks("2").is_err());
        assert_eq!(parse_key_value("a=b=c", "--config").unwrap(), ("a".to_string(), "b=c".to_string()));
        assert!(parse_key_value("novalue", "--config").is_err());
    }
}
