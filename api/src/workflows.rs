//! Publishing and reading workflow definitions.

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiRequest, ApiResponse, Object, OpenApi};
use sagaflow_engine::compile::export;
use sagaflow_engine::runtime::{PublishOutcome, Published, Runtime};

use crate::auth::{Auth, Need};
use crate::problem::ApiError;
use crate::types::Time;
use crate::Tag;

/// A workflow definition in YAML (the language: docs/workflow-language.md).
#[derive(ApiRequest)]
pub enum WorkflowSource {
    #[oai(content_type = "application/yaml")]
    Yaml(PlainText<String>),
    #[oai(content_type = "text/yaml")]
    TextYaml(PlainText<String>),
    #[oai(content_type = "text/plain")]
    Text(PlainText<String>),
    /// The YAML inside JSON, for clients that only send JSON.
    #[oai(content_type = "application/json")]
    Json(Json<PublishWorkflow>),
}

/// A workflow definition carried in JSON.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct PublishWorkflow {
    /// The YAML definition.
    pub source: String,
}

/// How to draw a graph.
#[derive(poem_openapi::Enum, Clone, Copy, Default)]
#[oai(rename_all = "lowercase")]
pub enum GraphFormat {
    Dot,
    Mermaid,
    #[default]
    Json,
}

/// One published version.
#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct WorkflowVersion {
    pub name: String,
    pub version: u32,
    /// The sha256 of the definition, hex.
    pub sha256: String,
    pub description: Option<String>,
    pub steps: Vec<String>,
    pub published_at: Time,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct WorkflowSummary {
    pub name: String,
    pub latest: u32,
    pub versions: Vec<u32>,
    pub description: Option<String>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct WorkflowDetail {
    pub name: String,
    pub versions: Vec<WorkflowVersionSource>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
pub struct WorkflowVersionSource {
    #[oai(flatten)]
    pub version: WorkflowVersion,
    /// The YAML as published.
    pub source: String,
}

#[derive(ApiResponse)]
pub enum PublishResponse {
    /// Published.
    #[oai(status = 201)]
    Created(Json<WorkflowVersion>),
    /// This exact definition was already published under this version.
    #[oai(status = 200)]
    Unchanged(Json<WorkflowVersion>),
}

/// A graph in the format asked for.
#[derive(poem_openapi::ResponseContent)]
pub enum Graph {
    #[oai(content_type = "text/vnd.graphviz")]
    Dot(PlainText<String>),
    #[oai(content_type = "text/vnd.mermaid")]
    Mermaid(PlainText<String>),
    Json(Json<serde_json::Value>),
}

#[derive(ApiResponse)]
pub enum GraphResponse {
    /// The compiled state machine.
    #[oai(status = 200)]
    Graph(Graph),
}

pub(crate) fn version_of(p: &Published) -> WorkflowVersion {
    WorkflowVersion {
        name: p.machine.name.clone(),
        version: p.machine.version,
        sha256: p.machine.hash.clone(),
        description: p.machine.description.clone(),
        steps: p.machine.steps.iter().map(|s| s.name.clone()).collect(),
        published_at: p.published_at.into(),
    }
}

pub struct WorkflowsApi {
    pub rt: Runtime,
}

#[OpenApi(prefix_path = "/workflows", tag = "Tag::Workflows")]
impl WorkflowsApi {
    /// Publish a workflow.
    ///
    /// The body is the YAML definition. It is validated as `sagaflow validate`
    /// does; every problem comes back located (line, column, path). A
    /// version, once published, cannot change: publish changes as a new `version`.
    #[oai(path = "/", method = "post", operation_id = "publish_workflow")]
    async fn publish(&self, auth: Auth, body: WorkflowSource) -> Result<PublishResponse, ApiError> {
        auth.require(Need::Publish)?;
        let source = match body {
            WorkflowSource::Yaml(PlainText(s))
            | WorkflowSource::TextYaml(PlainText(s))
            | WorkflowSource::Text(PlainText(s)) => s,
            WorkflowSource::Json(Json(w)) => w.source,
        };
        let (published, outcome) = self.rt.publish(&source).await?;
        let v = Json(version_of(&published));
        Ok(match outcome {
            PublishOutcome::Published => PublishResponse::Created(v),
            PublishOutcome::Unchanged => PublishResponse::Unchanged(v),
        })
    }

    /// List workflows.
    #[oai(path = "/", method = "get", operation_id = "list_workflows")]
    async fn list(&self, auth: Auth) -> Result<Json<Vec<WorkflowSummary>>, ApiError> {
        auth.require(Need::Read)?;
        Ok(Json(
            self.rt
                .workflows()
                .into_iter()
                .filter_map(|(name, versions)| {
                    let latest = versions.last()?;
                    Some(WorkflowSummary {
                        name,
                        latest: latest.machine.version,
                        description: latest.machine.description.clone(),
                        versions: versions.iter().map(|p| p.machine.version).collect(),
                    })
                })
                .collect(),
        ))
    }

    /// Get a workflow with all its versions and their sources.
    #[oai(path = "/:name", method = "get", operation_id = "get_workflow")]
    async fn get(&self, auth: Auth, name: Path<String>) -> Result<Json<WorkflowDetail>, ApiError> {
        auth.require(Need::Read)?;
        self.rt.workflow(&name, None)?;
        let versions = self
            .rt
            .workflows()
            .into_iter()
            .find(|(n, _)| *n == name.0)
            .map(|(_, v)| v)
            .unwrap_or_default()
            .iter()
            .map(|p| WorkflowVersionSource {
                version: version_of(p),
                source: p.source.clone(),
            })
            .collect();
        Ok(Json(WorkflowDetail {
            name: name.0,
            versions,
        }))
    }

    /// The compiled state machine of a version (the newest by default), as DOT, Mermaid or JSON.
    #[oai(
        path = "/:name/graph",
        method = "get",
        operation_id = "get_workflow_graph"
    )]
    async fn graph(
        &self,
        auth: Auth,
        name: Path<String>,
        #[oai(validator(minimum(value = "1")))] version: Query<Option<u32>>,
        /// `json` (the default), `dot` or `mermaid`.
        format: Query<Option<GraphFormat>>,
    ) -> Result<GraphResponse, ApiError> {
        auth.require(Need::Read)?;
        let p = self.rt.workflow(&name, version.0)?;
        Ok(GraphResponse::Graph(match format.0.unwrap_or_default() {
            GraphFormat::Dot => Graph::Dot(PlainText(export::dot(&p.machine))),
            GraphFormat::Mermaid => Graph::Mermaid(PlainText(export::mermaid(&p.machine))),
            GraphFormat::Json => Graph::Json(Json(export::json(&p.machine))),
        }))
    }
}
