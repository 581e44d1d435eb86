use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Value};

use super::{null_default, string_enum, Timestamp};

string_enum! {
    /// State of a template: that of its latest successful build, or of its first one.
    TemplateStatus {
        /// Its first build is queued.
        Pending = "pending",
        /// Its first build runs.
        Building = "building",
        /// Sandboxes can be created from it.
        Ready = "ready",
        /// Its build failed (see `error_message`).
        Failed = "failed",
    }
}

string_enum! {
    /// State of one build of a template.
    TemplateBuildStatus {
        /// Queued.
        Pending = "pending",
        /// Pulling the image and running the steps.
        Building = "building",
        /// Saving the result.
        Snapshotting = "snapshotting",
        /// Done: the template is ready.
        Ready = "ready",
        /// Failed (see `error_message`).
        Failed = "failed",
        /// Cancelled.
        Cancelled = "cancelled",
    }
}

string_enum! {
    /// Which stream a build log line came from.
    BuildLogStream {
        /// A step's stdout.
        Stdout = "stdout",
        /// A step's stderr.
        Stderr = "stderr",
        /// The build system (queueing, pulls, status changes).
        System = "system",
    }
}

/// A template as the API describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "TemplateInfoWire")]
#[non_exhaustive]
pub struct TemplateInfo {
    /// Template id.
    pub id: String,
    /// Name (`superserve/base`, `my-env`, ...).
    pub name: String,
    /// The owning team (`superserve` for built-ins).
    #[serde(default, deserialize_with = "null_default")]
    pub team_id: String,
    /// State.
    pub status: TemplateStatus,
    /// vCPUs of its sandboxes.
    #[serde(default, deserialize_with = "null_default")]
    pub vcpu: u32,
    /// Memory of its sandboxes, MiB.
    #[serde(default, deserialize_with = "null_default")]
    pub memory_mib: u64,
    /// Disk of its sandboxes, MiB.
    #[serde(default, deserialize_with = "null_default")]
    pub disk_mib: u64,
    /// Size of the built image, when known.
    #[serde(default)]
    pub size_bytes: Option<u64>,
    /// Why the build failed (`"<code>: <detail>"`).
    #[serde(default)]
    pub error_message: Option<String>,
    /// Creation time.
    pub created_at: Timestamp,
    /// When its latest successful build finished.
    #[serde(default)]
    pub built_at: Option<Timestamp>,
    /// Its latest build (from `build_id` on create, or `latest_build_id`).
    #[serde(default)]
    pub latest_build_id: Option<String>,
}

#[derive(Deserialize)]
struct TemplateInfoWire {
    id: String,
    name: String,
    #[serde(default, deserialize_with = "null_default")]
    team_id: String,
    status: TemplateStatus,
    #[serde(default, deserialize_with = "null_default")]
    vcpu: u32,
    #[serde(default, deserialize_with = "null_default")]
    memory_mib: u64,
    #[serde(default, deserialize_with = "null_default")]
    disk_mib: u64,
    #[serde(default)]
    size_bytes: Option<u64>,
    #[serde(default)]
    error_message: Option<String>,
    created_at: Timestamp,
    #[serde(default)]
    built_at: Option<Timestamp>,
    #[serde(default)]
    latest_build_id: Option<String>,
    #[serde(default)]
    build_id: Option<String>,
}

impl From<TemplateInfoWire> for TemplateInfo {
    fn from(w: TemplateInfoWire) -> Self {
        TemplateInfo {
            id: w.id,
            name: w.name,
            team_id: w.team_id,
            status: w.status,
            vcpu: w.vcpu,
            memory_mib: w.memory_mib,
            disk_mib: w.disk_mib,
            size_bytes: w.size_bytes,
            error_message: w.error_message,
            created_at: w.created_at,
            built_at: w.built_at,
            latest_build_id: w.build_id.or(w.latest_build_id),
        }
    }
}

/// One build of a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TemplateBuildInfo {
    /// Build id.
    pub id: String,
    /// Its template.
    pub template_id: String,
    /// State.
    pub status: TemplateBuildStatus,
    /// Hash of the build spec (a rebuild of the same spec is the same build).
    pub build_spec_hash: String,
    /// Why it failed (`"<code>: <detail>"`).
    #[serde(default)]
    pub error_message: Option<String>,
    /// When it started running.
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    /// When it ended.
    #[serde(default)]
    pub finalized_at: Option<Timestamp>,
    /// When it was queued.
    pub created_at: Timestamp,
}

/// One line of a build's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BuildLogEvent {
    /// When it was written.
    pub timestamp: Timestamp,
    /// Which stream.
    pub stream: BuildLogStream,
    /// The text.
    #[serde(default, deserialize_with = "null_default")]
    pub text: String,
    /// `true` on the last event of the build.
    #[serde(default)]
    pub finished: Option<bool>,
    /// The build's final status, on the last event (`ready`, `failed`, `cancelled`).
    #[serde(default)]
    pub status: Option<TemplateBuildStatus>,
}

/// One step of a template build: exactly one of run, env, workdir or user, as on the wire.
///
/// ```
/// use superserve::BuildStep;
/// let steps = [
///     BuildStep::run("apt-get update && apt-get install -y git"),
///     BuildStep::workdir("/srv/app"),
///     BuildStep::env("PORT", "8000"),
///     BuildStep::user("app", true),
/// ];
/// assert_eq!(serde_json::to_string(&steps[2]).unwrap(), r#"{"env":{"key":"PORT","value":"8000"}}"#);
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildStep {
    /// Run a shell command (`/bin/sh -c`) as the current user, in the current directory.
    Run(String),
    /// Set an environment variable for later steps and for the template's sandboxes.
    Env {
        /// Variable name.
        key: String,
        /// Value.
        value: String,
    },
    /// Change the working directory for later steps and the default directory of commands in
    /// the template's sandboxes (created if missing).
    Workdir(String),
    /// Switch to a user (created if missing) for later steps and the template's sandboxes;
    /// `sudo` gives it password-less sudo.
    User {
        /// User name.
        name: String,
        /// Password-less sudo.
        sudo: bool,
    },
    /// A step this version of the crate does not know (its JSON, kept verbatim).
    Unknown(String),
}

impl BuildStep {
    /// A `run` step.
    pub fn run(command: impl Into<String>) -> Self {
        BuildStep::Run(command.into())
    }
    /// An `env` step.
    pub fn env(key: impl Into<String>, value: impl Into<String>) -> Self {
        BuildStep::Env {
            key: key.into(),
            value: value.into(),
        }
    }
    /// A `workdir` step.
    pub fn workdir(dir: impl Into<String>) -> Self {
        BuildStep::Workdir(dir.into())
    }
    /// A `user` step.
    pub fn user(name: impl Into<String>, sudo: bool) -> Self {
        BuildStep::User {
            name: name.into(),
            sudo,
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        match self {
            BuildStep::Run(c) => json!({ "run": c }),
            BuildStep::Env { key, value } => json!({ "env": { "key": key, "value": value } }),
            BuildStep::Workdir(d) => json!({ "workdir": d }),
            BuildStep::User { name, sudo } => json!({ "user": { "name": name, "sudo": sudo } }),
            BuildStep::Unknown(raw) => serde_json::from_str(raw).unwrap_or(Value::Null),
        }
    }
}

impl fmt::Debug for BuildStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildStep::Run(c) => f.debug_tuple("Run").field(c).finish(),
            // env values may be credentials: show the key only
            BuildStep::Env { key, .. } => f
                .debug_struct("Env")
                .field("key", key)
                .field("value", &"<hidden>")
                .finish(),
            BuildStep::Workdir(d) => f.debug_tuple("Workdir").field(d).finish(),
            BuildStep::User { name, sudo } => f
                .debug_struct("User")
                .field("name", name)
                .field("sudo", sudo)
                .finish(),
            BuildStep::Unknown(raw) => f.debug_tuple("Unknown").field(raw).finish(),
        }
    }
}

impl Serialize for BuildStep {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for BuildStep {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let obj = v.as_object();
        let one = obj.filter(|o| o.len() == 1);
        let s = |x: &Value, k: &str| x.get(k).and_then(Value::as_str).map(str::to_owned);
        let step = one.and_then(|o| {
            if let Some(c) = o.get("run").and_then(Value::as_str) {
                return Some(BuildStep::Run(c.to_owned()));
            }
            if let Some(d) = o.get("workdir").and_then(Value::as_str) {
                return Some(BuildStep::Workdir(d.to_owned()));
            }
            if let Some(e) = o.get("env") {
                return Some(BuildStep::Env {
                    key: s(e, "key")?,
                    value: s(e, "value")?,
                });
            }
            if let Some(u) = o.get("user") {
                return Some(BuildStep::User {
                    name: s(u, "name")?,
                    sudo: u.get("sudo").and_then(Value::as_bool).unwrap_or(false),
                });
            }
            None
        });
        Ok(step.unwrap_or_else(|| BuildStep::Unknown(v.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_trip_and_unknowns() {
        for step in [
            BuildStep::run("make"),
            BuildStep::env("K", "V"),
            BuildStep::workdir("/srv"),
            BuildStep::user("app", true),
        ] {
            let text = serde_json::to_string(&step).unwrap();
            assert_eq!(serde_json::from_str::<BuildStep>(&text).unwrap(), step);
        }
        assert_eq!(
            serde_json::to_value(BuildStep::user("app", false)).unwrap(),
            json!({"user": {"name": "app", "sudo": false}})
        );
        let odd: BuildStep = serde_json::from_str(r#"{"copy":{"src":"a"}}"#).unwrap();
        assert!(matches!(odd, BuildStep::Unknown(_)));
        assert!(!format!("{:?}", BuildStep::env("TOKEN", "hunter2")).contains("hunter2"));
        let info: TemplateInfo = serde_json::from_str(
            r#"{"id":"t","name":"n","team_id":"x","status":"queued","created_at":"c","build_id":"b1"}"#,
        )
        .unwrap();
        assert_eq!(info.status, TemplateStatus::Unknown("queued".into()));
        assert_eq!(info.latest_build_id.as_deref(), Some("b1"));
        let ev: BuildLogEvent = serde_json::from_str(
            r#"{"timestamp":"t","stream":"system","text":null,"finished":true,"status":"failed"}"#,
        )
        .unwrap();
        assert_eq!(ev.status, Some(TemplateBuildStatus::Failed));
        assert_eq!(ev.text, "");
    }
}
