//! Secrets bound to sandboxes: binding (with a fresh stand-in token), detaching, revoking
//! every binding of a deleted secret, and listing a secret's bindings.

use super::super::error::ApiError;
use super::super::ident::new_token;
use super::super::model::{self, BindBody, Binding, Status};
use super::App;

impl App {
    /// A binding of an existing secret with a fresh stand-in token (404 if the secret does not
    /// exist).
    pub(super) async fn new_binding(
        &self,
        env_key: String,
        secret_name: String,
    ) -> Result<Binding, ApiError> {
        let secret = self.secrets.get(&secret_name).await?;
        Ok(Binding {
            env_key,
            secret_name,
            revoked: false,
            detached: false,
            secret_id: secret.id,
            hosts: secret.hosts,
            standin: format!("ss_standin_{}", new_token()),
        })
    }

    /// `POST /sandboxes/{id}/secrets`.
    pub(crate) async fn bind_secret(&self, id: &str, body: BindBody) -> Result<Binding, ApiError> {
        let entry = self.entry(id)?;
        let env_key = body.env_key.unwrap_or_default();
        let secret_name = body.secret_name.unwrap_or_default();
        if !model::valid_env_key(&env_key) {
            return Err(ApiError::bad_request(format!(
                "env_key {env_key:?} is not a valid environment variable name"
            )));
        }
        if secret_name.is_empty() {
            return Err(ApiError::bad_request("secret_name is required"));
        }
        let binding = self.new_binding(env_key, secret_name).await?;
        let _ops = entry.ops.lock().await;
        entry.with(|r| {
            if r.env_vars.contains_key(&binding.env_key) {
                return Err(ApiError::bad_request(format!(
                    "{:?} is already set in env_vars",
                    binding.env_key
                )));
            }
            // a replaced binding's stand-in is revoked, like a detached one
            for b in r.secrets.iter_mut() {
                if b.env_key == binding.env_key {
                    b.detached = true;
                }
            }
            r.secrets.push(binding.clone());
            Ok(())
        })?;
        self.persist(&entry).await?;
        Ok(binding)
    }

    /// `DELETE /sandboxes/{id}/secrets/{env_key}`.
    pub(crate) async fn unbind_secret(&self, id: &str, env_key: &str) -> Result<(), ApiError> {
        let entry = self.entry(id)?;
        let _ops = entry.ops.lock().await;
        let found = entry.with(|r| {
            let mut found = false;
            for b in r.secrets.iter_mut().filter(|b| b.visible()) {
                if b.env_key == env_key {
                    b.detached = true;
                    found = true;
                }
            }
            found
        });
        if !found {
            return Err(ApiError::not_found(format!(
                "no secret is bound to {env_key:?}"
            )));
        }
        self.persist(&entry).await
    }

    /// After a secret was deleted: every binding of it is marked revoked (its stand-in is
    /// refused at egress; the sandbox's bindings show `revoked: true`).
    pub(crate) async fn revoke_bindings_of(&self, secret_name: &str) -> Result<(), ApiError> {
        for entry in self.all() {
            let touched = entry.with(|r| {
                let mut touched = false;
                for b in r.secrets.iter_mut() {
                    if b.secret_name == secret_name && !b.revoked {
                        b.revoked = true;
                        touched = true;
                    }
                }
                touched
            });
            if touched {
                self.persist(&entry).await?;
            }
        }
        Ok(())
    }

    /// Sandboxes with a live binding of `secret_name`: (id, name, env_key, status).
    pub(crate) fn bindings_of(&self, secret_name: &str) -> Vec<(String, String, String, Status)> {
        let mut out = Vec::new();
        for entry in self.all() {
            let rec = entry.rec();
            for b in rec.secrets.iter() {
                if b.secret_name == secret_name && b.visible() && !b.revoked {
                    out.push((
                        rec.id.clone(),
                        rec.name.clone(),
                        b.env_key.clone(),
                        rec.status,
                    ));
                }
            }
        }
        out
    }
}
