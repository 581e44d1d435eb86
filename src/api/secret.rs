use std::fmt;

use reqwest::Method;
use serde_json::json;

use super::{dual, Api};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::models::{ProviderShortcut, ProxyAuditEvent, SecretInfo, SecretSandboxBinding};
use crate::options::{AuditOptions, SecretCreateOptions};
use crate::wire::seg;

/// A team secret: a credential the sandboxes never see. Bound to a sandbox as an environment
/// variable, it holds a stand-in token that the egress proxy swaps for the real value on
/// requests to the secret's hosts.
///
/// Cheap to clone. The fields are a snapshot; [`get_info`](Self::get_info) fetches fresh ones.
#[derive(Clone)]
pub struct Secret {
    api: Api,
    info: SecretInfo,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("id", &self.info.id)
            .field("name", &self.info.name)
            .field("auth_type", &self.info.auth_type)
            .field("hosts", &self.info.hosts)
            .finish_non_exhaustive()
    }
}

fn require_name(name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(Error::invalid("secret name must not be empty"));
    }
    Ok(())
}

#[dual]
impl Secret {
    /// Stores a secret, with the configuration from the environment.
    pub async fn create(opts: SecretCreateOptions) -> Result<Secret> {
        Self::create_with_config(&Config::from_env()?, opts).await
    }

    /// [`create`](Self::create) with an explicit configuration.
    #[tracing::instrument(name = "secret.create", level = "debug", skip_all)]
    pub async fn create_with_config(config: &Config, opts: SecretCreateOptions) -> Result<Secret> {
        let body = opts.to_body()?;
        let api = Api::new(config.clone());
        let resp = api
            .send(&api.control(Method::POST, "/secrets").json(&body))
            .await?;
        let info = resp.json("POST /secrets")?;
        Ok(Secret { api, info })
    }

    /// Fetches a secret by name.
    pub async fn get(name: &str) -> Result<Secret> {
        Self::get_with_config(&Config::from_env()?, name).await
    }

    /// [`get`](Self::get) with an explicit configuration.
    #[tracing::instrument(name = "secret.get", level = "debug", skip_all, fields(secret = name))]
    pub async fn get_with_config(config: &Config, name: &str) -> Result<Secret> {
        require_name(name)?;
        let api = Api::new(config.clone());
        let info = Self::fetch(&api, name).await?;
        Ok(Secret { api, info })
    }

    async fn fetch(api: &Api, name: &str) -> Result<SecretInfo> {
        let resp = api
            .send(&api.control(Method::GET, &format!("/secrets/{}", seg(name))))
            .await?;
        resp.json("GET /secrets/{name}")
    }

    /// Lists the team's secrets.
    pub async fn list() -> Result<Vec<SecretInfo>> {
        Self::list_with_config(&Config::from_env()?).await
    }

    /// [`list`](Self::list) with an explicit configuration.
    #[tracing::instrument(name = "secret.list", level = "debug", skip_all)]
    pub async fn list_with_config(config: &Config) -> Result<Vec<SecretInfo>> {
        let api = Api::new(config.clone());
        let resp = api.send(&api.control(Method::GET, "/secrets")).await?;
        resp.json("GET /secrets")
    }

    /// Deletes a secret by name. Idempotent; bound sandboxes lose access at once.
    pub async fn delete_by_name(name: &str) -> Result<()> {
        Self::delete_by_name_with_config(&Config::from_env()?, name).await
    }

    /// [`delete_by_name`](Self::delete_by_name) with an explicit configuration.
    #[tracing::instrument(name = "secret.delete_by_name", level = "debug", skip_all, fields(secret = name))]
    pub async fn delete_by_name_with_config(config: &Config, name: &str) -> Result<()> {
        require_name(name)?;
        Self::delete_raw(&Api::new(config.clone()), name).await
    }

    async fn delete_raw(api: &Api, name: &str) -> Result<()> {
        let req = api.control(Method::DELETE, &format!("/secrets/{}", seg(name)));
        match api.send(&req).await {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The secret id.
    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// The secret name.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// Everything known when the handle was made.
    pub fn info(&self) -> &SecretInfo {
        &self.info
    }

    /// Fetches fresh information.
    #[tracing::instrument(name = "secret.get_info", level = "debug", skip_all, fields(secret = self.info.name.as_str()))]
    pub async fn get_info(&self) -> Result<SecretInfo> {
        Self::fetch(&self.api, &self.info.name).await
    }

    /// Replaces the value; returns the updated secret. Bindings keep working.
    #[tracing::instrument(name = "secret.rotate", level = "debug", skip_all, fields(secret = self.info.name.as_str()))]
    pub async fn rotate(&self, value: impl Into<String>) -> Result<Secret> {
        let value = value.into();
        if value.is_empty() {
            return Err(Error::invalid("secret value must not be empty"));
        }
        let req = self
            .api
            .control(Method::PATCH, &format!("/secrets/{}", seg(&self.info.name)))
            .json(&json!({ "value": value }));
        let info = self.api.send(&req).await?.json("PATCH /secrets/{name}")?;
        Ok(Secret {
            api: self.api.clone(),
            info,
        })
    }

    /// Deletes the secret. Idempotent.
    #[tracing::instrument(name = "secret.delete", level = "debug", skip_all, fields(secret = self.info.name.as_str()))]
    pub async fn delete(&self) -> Result<()> {
        Self::delete_raw(&self.api, &self.info.name).await
    }

    /// Secret-bearing requests made with this secret, newest first.
    #[tracing::instrument(name = "secret.get_audit", level = "debug", skip_all, fields(secret = self.info.name.as_str()))]
    pub async fn get_audit(&self, opts: AuditOptions) -> Result<Vec<ProxyAuditEvent>> {
        let q = opts.to_query();
        let mut path = format!("/secrets/{}/audit", seg(&self.info.name));
        if !q.is_empty() {
            path = format!("{path}?{q}");
        }
        let resp = self.api.send(&self.api.control(Method::GET, &path)).await?;
        resp.json("GET /secrets/{name}/audit")
    }

    /// The sandboxes this secret is bound to.
    #[tracing::instrument(name = "secret.get_sandboxes", level = "debug", skip_all, fields(secret = self.info.name.as_str()))]
    pub async fn get_sandboxes(&self) -> Result<Vec<SecretSandboxBinding>> {
        let path = format!("/secrets/{}/sandboxes", seg(&self.info.name));
        let resp = self.api.send(&self.api.control(Method::GET, &path)).await?;
        resp.json("GET /secrets/{name}/sandboxes")
    }
}

/// The catalog of provider shortcuts.
#[derive(Debug, Clone, Copy)]
pub struct Provider;

#[dual]
impl Provider {
    /// Lists the provider shortcuts (`openai`, `anthropic`, ...).
    pub async fn list() -> Result<Vec<ProviderShortcut>> {
        Self::list_with_config(&Config::from_env()?).await
    }

    /// [`list`](Self::list) with an explicit configuration.
    #[tracing::instrument(name = "provider.list", level = "debug", skip_all)]
    pub async fn list_with_config(config: &Config) -> Result<Vec<ProviderShortcut>> {
        let api = Api::new(config.clone());
        let resp = api.send(&api.control(Method::GET, "/providers")).await?;
        resp.json("GET /providers")
    }
}
