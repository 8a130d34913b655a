//! Network configurations in the CNI configuration directory: `.conflist` files (a list of
//! plugins) and `.conf`/`.json` files (one plugin, taken as a list of one), as libcni
//! reads them. The first file in lexical order that loads is the node's network.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::CniError;

/// One network configuration: its name, CNI version and plugin configurations.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// The file it came from.
    pub file: PathBuf,
    /// `name`.
    pub name: String,
    /// `cniVersion`.
    pub cni_version: String,
    /// Each plugin's configuration object (with `type`), in order.
    pub plugins: Vec<Map<String, Value>>,
}

impl NetworkConfig {
    /// Parses the text of a `.conflist` (`conflist = true`) or single-plugin file.
    pub fn parse(file: &Path, text: &str, conflist: bool) -> Result<NetworkConfig, CniError> {
        let bad = |why: String| CniError::Config {
            file: file.to_owned(),
            why,
        };
        let v: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let Value::Object(top) = v else {
            return Err(bad("not a JSON object".into()));
        };
        let text_field = |k: &str| top.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let name = text_field("name");
        if name.is_empty() {
            return Err(bad("no `name`".into()));
        }
        let cni_version = text_field("cniVersion");
        let plugins = if conflist {
            let Some(Value::Array(list)) = top.get("plugins") else {
                return Err(bad("a .conflist needs a `plugins` array".into()));
            };
            list.iter()
                .map(|p| match p {
                    Value::Object(m) => Ok(m.clone()),
                    _ => Err(bad("every entry of `plugins` must be an object".into())),
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            vec![top.clone()]
        };
        if plugins.is_empty() {
            return Err(bad("`plugins` is empty".into()));
        }
        for p in &plugins {
            let ty = p.get("type").and_then(Value::as_str).unwrap_or("");
            if ty.is_empty() || ty.contains('/') || ty.starts_with('.') {
                return Err(bad(format!(
                    "a plugin has no usable `type` ({ty:?}): it names a program in the CNI bin directories"
                )));
            }
        }
        Ok(NetworkConfig {
            file: file.to_owned(),
            name,
            cni_version,
            plugins,
        })
    }

    /// The plugin types, in order.
    pub fn types(&self) -> Vec<&str> {
        self.plugins
            .iter()
            .filter_map(|p| p.get("type").and_then(Value::as_str))
            .collect()
    }

    /// The configuration as one `.conflist` JSON value (stored with a sandbox so that DEL
    /// uses what ADD used, whatever happens to the directory meanwhile).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "cniVersion": self.cni_version,
            "name": self.name,
            "plugins": self.plugins,
        })
    }

    /// The inverse of [`Self::to_json`].
    pub fn from_json(file: &Path, v: &Value) -> Result<NetworkConfig, CniError> {
        Self::parse(file, &v.to_string(), true)
    }
}

/// Loads the node's network from `dir`: the first `.conflist`, `.conf` or `.json` file in
/// lexical order that parses (files that do not are logged and skipped, as libcni does).
pub fn load(dir: &Path) -> Result<NetworkConfig, CniError> {
    let entries = std::fs::read_dir(dir).map_err(|e| CniError::NoConfig {
        dir: dir.to_owned(),
        why: format!("cannot read it: {e}"),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .collect();
    files.sort();
    let mut skipped = Vec::new();
    for f in files {
        let conflist = f.extension().is_some_and(|e| e == "conflist");
        let loaded = std::fs::read_to_string(&f)
            .map_err(|e| CniError::Config {
                file: f.clone(),
                why: e.to_string(),
            })
            .and_then(|t| NetworkConfig::parse(&f, &t, conflist));
        match loaded {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!("skipping CNI configuration: {e}");
                skipped.push(e.to_string());
            }
        }
    }
    Err(CniError::NoConfig {
        dir: dir.to_owned(),
        why: if skipped.is_empty() {
            "it holds no .conflist, .conf or .json file".into()
        } else {
            format!("no file in it loads: {}", skipped.join("; "))
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_the_first_valid_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(load(dir.path()), Err(CniError::NoConfig { .. })));
        std::fs::write(dir.path().join("05-broken.conflist"), "{").unwrap();
        std::fs::write(
            dir.path().join("20-b.conf"),
            r#"{"cniVersion":"0.4.0","name":"b","type":"bridge"}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("00-ignored.txt"), "x").unwrap();
        let c = load(dir.path()).unwrap();
        assert_eq!((c.name.as_str(), c.cni_version.as_str()), ("a", "1.0.0"));
        assert_eq!(c.types(), ["bridge", "portmap"]);
        let back = NetworkConfig::from_json(&c.file, &c.to_json()).unwrap();
        assert_eq!(back, c);
        std::fs::remove_file(dir.path().join("10-a.conflist")).unwrap();
        let c = load(dir.path()).unwrap();
        assert_eq!((c.name.as_str(), c.types()), ("b", vec!["bridge"]));
    }

    #[test]
    fn rejects_what_cannot_run() {
        let p = Path::new("x.conflist");
        for bad in [
            r#"[]"#,
            r#"{"plugins":[{"type":"bridge"}]}"#,
            r#"{"name":"n","plugins":[]}"#,
            r#"{"name":"n","plugins":[{"type":"../../bin/sh"}]}"#,
            r#"{"name":"n","plugins":[{}]}"#,
            r#"{"name":"n","plugins":[1]}"#,
        ] {
            assert!(NetworkConfig::parse(p, bad, true).is_err(), "{bad}");
        }
    }
}
