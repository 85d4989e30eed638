//! The workflow catalogue. Publishing is an event: `WorkflowPublished`
//! (the YAML source, version and hash) in the stream `workflow-{name}`, and
//! the name once in the stream `workflows`, so a restart finds every
//! version and a running instance always finds the exact version it started on.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::{InputError, RuntimeError};
use crate::compile::{check, Machine};
use crate::saga::{Clock, Timestamp};
use crate::secrets::Secrets;
use crate::store::{EventStore, Expected, NewEvent};

pub const CATALOGUE_STREAM: &str = "workflows";

/// One published version of a workflow.
pub struct Published {
    pub machine: Arc<Machine>,
    pub source: String,
    pub published_at: Timestamp,
    input_schema: Option<jsonschema::Validator>,
}

impl Published {
    /// Every way `input` fails the workflow's input schema.
    pub fn check_input(&self, input: &serde_json::Value) -> Result<(), Vec<InputError>> {
        let Some(v) = &self.input_schema else {
            return Ok(());
        };
        let errors: Vec<InputError> = v
            .iter_errors(input)
            .map(|e| {
                let mut pointer = e.instance_path().to_string();
                // a missing property is reported at its parent: name the property
                if let jsonschema::error::ValidationErrorKind::Required {
                    property: serde_json::Value::String(p),
                } = e.kind()
                {
                    pointer = format!("{pointer}/{}", p.replace('~', "~0").replace('/', "~1"));
                }
                InputError {
                    pointer,
                    message: e.to_string(),
                }
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[derive(Serialize, Deserialize)]
struct WorkflowPublished {
    name: String,
    version: u32,
    hash: String,
    source: String,
    at: Timestamp,
    /// The input fields the read models index (`search:`), for projections
    /// that follow the log without compiling the source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    search: Vec<String>,
}

/// What publishing did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    Published,
    /// The same definition was already published under this version.
    Unchanged,
}

#[derive(Default)]
pub struct Registry {
    workflows: RwLock<HashMap<String, BTreeMap<u32, Arc<Published>>>>,
    /// Values that override the workflows' `env` defaults.
    env: BTreeMap<String, String>,
    secrets: Arc<Secrets>,
}

impl Registry {
    pub fn new(env: BTreeMap<String, String>, secrets: Arc<Secrets>) -> Self {
        Self {
            workflows: RwLock::default(),
            env,
            secrets,
        }
    }

    fn compile(&self, source: &str, at: Timestamp) -> Result<Published, RuntimeError> {
        let checked = check(source);
        let Some(mut machine) = checked.machine else {
            return Err(RuntimeError::InvalidWorkflow(checked.diagnostics));
        };
        for (k, v) in &self.env {
            if machine.env.contains_key(k) {
                machine.env.insert(k.clone(), v.clone());
            }
        }
        machine.secrets = self.secrets.clone();
        let input_schema = match &machine.input_schema {
            Some(s) => Some(
                jsonschema::validator_for(s)
                    .map_err(|e| RuntimeError::Corrupt(format!("input schema: {e}")))?,
            ),
            None => None,
        };
        Ok(Published {
            machine: Arc::new(machine),
            source: source.to_string(),
            published_at: at,
            input_schema,
        })
    }

    fn insert(&self, p: Published) -> Arc<Published> {
        let p = Arc::new(p);
        let mut w = self
            .workflows
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        w.entry(p.machine.name.clone())
            .or_default()
            .insert(p.machine.version, p.clone());
        p
    }

    /// Validates, records and registers a definition.
    pub async fn publish(
        &self,
        store: &dyn EventStore,
        clock: &dyn Clock,
        source: &str,
    ) -> Result<(Arc<Published>, PublishOutcome), RuntimeError> {
        let now = clock.now();
        let p = self.compile(source, now)?;
        let (name, version, hash) = (
            p.machine.name.clone(),
            p.machine.version,
            p.machine.hash.clone(),
        );
        if let Ok(existing) = self.get(&name, Some(version)) {
            return if existing.machine.hash == hash {
                Ok((existing, PublishOutcome::Unchanged))
            } else {
                Err(RuntimeError::VersionConflict { name, version })
            };
        }
        let stream = format!("workflow-{name}");
        let known = store.read_stream(&stream, 0).await?.len() as u64;
        if known == 0 {
            let named = NewEvent {
                event_type: "WorkflowNamed".into(),
                schema_version: 1,
                data: json!({ "name": name }).into(),
            };
            store
                .append(CATALOGUE_STREAM, Expected::Any, vec![named])
                .await?;
        }
        let event = WorkflowPublished {
            name: name.clone(),
            version,
            hash,
            source: source.to_string(),
            at: now,
            search: p.machine.search.clone(),
        };
        let data =
            serde_json::to_value(&event).map_err(|e| RuntimeError::Corrupt(e.to_string()))?;
        let new = NewEvent {
            event_type: "WorkflowPublished".into(),
            schema_version: 1,
            data: data.into(),
        };
        match store
            .append(&stream, Expected::after(known), vec![new])
            .await
        {
            Ok(_) => Ok((self.insert(p), PublishOutcome::Published)),
            Err(e) if e.is_conflict() => {
                // Another replica published meanwhile: take in what it wrote and look again.
                for e in store.read_stream(&stream, known).await? {
                    self.learn(&e);
                }
                match self.get(&name, Some(version)) {
                    Ok(existing) if existing.machine.hash == p.machine.hash => {
                        Ok((existing, PublishOutcome::Unchanged))
                    }
                    Ok(_) => Err(RuntimeError::VersionConflict { name, version }),
                    Err(_) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Registers the version a `WorkflowPublished` event records (at start, or
    /// published by another replica), unless it is known; true if it was added.
    pub fn learn(&self, e: &crate::store::RecordedEvent) -> bool {
        if e.event_type != "WorkflowPublished" {
            return false;
        }
        let Ok(published) = WorkflowPublished::deserialize(&*e.data) else {
            tracing::error!(stream = %e.stream, "skipping an unreadable WorkflowPublished event");
            return false;
        };
        if self.get(&published.name, Some(published.version)).is_ok() {
            return false;
        }
        // Definitions were valid when published; one that no longer compiles is kept out and reported.
        match self.compile(&published.source, published.at) {
            Ok(p) => {
                self.insert(p);
                true
            }
            Err(err) => {
                tracing::error!(workflow = %published.name, version = published.version, error = %err, "a published definition no longer compiles");
                false
            }
        }
    }

    /// Registers every version recorded in the store.
    pub async fn load(&self, store: &dyn EventStore) -> Result<usize, RuntimeError> {
        let mut names: Vec<String> = Vec::new();
        for e in store.read_stream(CATALOGUE_STREAM, 0).await? {
            if let Some(n) = e.data["name"].as_str() {
                if !names.iter().any(|x| x == n) {
                    names.push(n.to_string());
                }
            }
        }
        let mut count = 0;
        for name in names {
            for e in store.read_stream(&format!("workflow-{name}"), 0).await? {
                if self.learn(&e) {
                    count += 1;
                }
            }
        }
        Ok(count)
    }

    /// A version of a workflow, or its newest.
    pub fn get(&self, name: &str, version: Option<u32>) -> Result<Arc<Published>, RuntimeError> {
        let w = self
            .workflows
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let versions = w
            .get(name)
            .ok_or_else(|| RuntimeError::UnknownWorkflow(name.to_string()))?;
        match version {
            Some(v) => versions
                .get(&v)
                .cloned()
                .ok_or_else(|| RuntimeError::UnknownVersion(name.to_string(), v)),
            None => versions
                .values()
                .next_back()
                .cloned()
                .ok_or_else(|| RuntimeError::UnknownWorkflow(name.to_string())),
        }
    }

    /// Every workflow with its versions, by name.
    pub fn list(&self) -> Vec<(String, Vec<Arc<Published>>)> {
        let w = self
            .workflows
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<_> = w
            .iter()
            .map(|(k, v)| (k.clone(), v.values().cloned().collect()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}
