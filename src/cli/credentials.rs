//! Registry credentials as the client finds them: given (`--user`), or from the docker
//! config file, or none.

use std::collections::HashMap;

use serde::Deserialize;

/// Credentials for `registry`: `user` if given (asking nothing: `user:password`), else the
/// docker config file's (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`), else
/// none (anonymous).
pub fn credentials(registry: &str, user: Option<&str>) -> Option<(String, String)> {
    if let Some(user) = user {
        let (name, password) = user.split_once(':').unwrap_or((user, ""));
        return Some((name.to_string(), password.to_string()));
    }
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".docker")));
    let config = dir.and_then(|d| std::fs::read(d.join("config.json")).ok())?;
    #[derive(Deserialize)]
    struct DockerConfig {
        #[serde(default)]
        auths: HashMap<String, DockerAuth>,
    }
    #[derive(Deserialize)]
    struct DockerAuth {
        #[serde(default)]
        auth: String,
    }
    let parsed = serde_json::from_slice::<DockerConfig>(&config).ok()?;
    let entry = parsed.auths.iter().find(|(k, _)| {
        let host = k
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or("");
        host == registry
    });
    use base64::Engine as _;
    entry
        .and_then(|(_, a)| {
            base64::engine::general_purpose::STANDARD
                .decode(&a.auth)
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(u, p)| (u.to_string(), p.to_string()))
        })
}
