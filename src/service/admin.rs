//! The admin API, `palr.admin.v1.Admin` (`proto/palr/admin/v1/admin.proto`): changes to what
//! a running server serves. Served by `server` on a listener of its own (`server.admin_addr`)
//! and only when some token has the `admin` scope (`conn` checks the token and the scope of
//! every call before it gets here); the work is [`Recommender`]'s.
//!
//! Calls are serialised by the core (one reload at a time, SIGHUP's included), and each is
//! logged with its caller and counted (`palr_admin_calls_total{call,outcome}`).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::proto::admin::v1 as pb;
use crate::proto::admin::v1::admin_server::Admin;

use super::conn::Caller;
use super::error::ServiceError;
use super::recommender::{
    AdapterChange, AdapterListing, DataCounts, DataReloadReport, Recommender, ReloadReport,
};
use crate::retrieval::RetrieverInfo;

/// The gRPC face of the admin operations on a [`Recommender`].
#[derive(Debug, Clone)]
pub struct AdminService {
    core: Arc<Recommender>,
}

impl AdminService {
    pub fn new(core: Arc<Recommender>) -> Self {
        Self { core }
    }
}

/// The token name of the caller (`conn` puts it in the request), for the log.
fn caller<T>(req: &Request<T>) -> String {
    req.extensions()
        .get::<Caller>()
        .map_or_else(|| "anonymous".to_owned(), |c| c.0.to_string())
}

fn loaded_to_proto(i: RetrieverInfo) -> pb::LoadedRetriever {
    pb::LoadedRetriever {
        // The file name only: the server's directory layout is not the caller's business.
        library_file: i
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        loaded_from_copy: i.loaded_from != i.path,
        plugin_name: i.plugin_name,
        plugin_version: i.plugin_version,
        generation: i.generation,
        stale_snapshot: i.stale_snapshot,
        note: i.note.unwrap_or_default(),
        name: i.name,
    }
}

fn reload_to_proto(r: ReloadReport) -> pb::ReloadRetrieversResponse {
    pb::ReloadRetrieversResponse {
        retrievers: r.retrievers.into_iter().map(loaded_to_proto).collect(),
        fusions: r.fusions,
        default_retriever: r.default,
        added: r.added,
        removed: r.removed,
        not_reloaded: r.not_reloaded.into_iter().map(str::to_owned).collect(),
        took_ms: r.took.as_secs_f64() * 1e3,
    }
}

fn counts_to_proto(c: DataCounts) -> pb::DataCounts {
    pb::DataCounts {
        items: c.items as u64,
        users: c.users as u64,
        interactions: c.interactions as u64,
        skipped_unknown_items: c.skipped_unknown_items as u64,
    }
}

fn data_reload_to_proto(r: DataReloadReport) -> pb::ReloadDataResponse {
    pb::ReloadDataResponse {
        before: Some(counts_to_proto(r.before)),
        after: Some(counts_to_proto(r.after)),
        items_added: r.items_added as u64,
        items_removed: r.items_removed as u64,
        training_view_stage: r.view_stage,
        training_view_fingerprint: r.view_fingerprint,
        previous_training_view_fingerprint: r.previous_view_fingerprint,
        retrievers: r.retrievers.into_iter().map(loaded_to_proto).collect(),
        took_ms: r.took.as_secs_f64() * 1e3,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn reload_retrievers(
        &self,
        request: Request<pb::ReloadRetrieversRequest>,
    ) -> Result<Response<pb::ReloadRetrieversResponse>, Status> {
        let trigger = format!("admin API, caller {:?}", caller(&request));
        let core = self.core.clone();
        // Plugins load and fit on a blocking thread; the core serialises reloads.
        let report = tokio::task::spawn_blocking(move || core.reload_retrievers(&trigger))
            .await
            .map_err(|e| ServiceError::Internal(format!("reload thread failed: {e}")))??;
        Ok(Response::new(reload_to_proto(report)))
    }

    async fn reload_data(
        &self,
        request: Request<pb::ReloadDataRequest>,
    ) -> Result<Response<pb::ReloadDataResponse>, Status> {
        let trigger = format!("admin API, caller {:?}", caller(&request));
        let core = self.core.clone();
        // Files are read and plugins fit on a blocking thread; the core serialises reloads.
        let report = tokio::task::spawn_blocking(move || core.reload_data(&trigger))
            .await
            .map_err(|e| ServiceError::Internal(format!("reload thread failed: {e}")))??;
        Ok(Response::new(data_reload_to_proto(report)))
    }

    async fn list_adapters(
        &self,
        request: Request<pb::ListAdaptersRequest>,
    ) -> Result<Response<pb::ListAdaptersResponse>, Status> {
        let default = self.core.config().model.default_adapter.clone();
        let adapters = self
            .core
            .adapter_listing()
            .into_iter()
            .map(adapter_to_proto)
            .collect();
        self.core
            .metrics()
            .admin_calls
            .with_label_values(&["ListAdapters", "ok"])
            .inc();
        tracing::debug!(caller = %caller(&request), "admin: adapters listed");
        Ok(Response::new(pb::ListAdaptersResponse {
            adapters,
            default_adapter: default,
        }))
    }

    async fn load_adapter(
        &self,
        request: Request<pb::LoadAdapterRequest>,
    ) -> Result<Response<pb::LoadAdapterResponse>, Status> {
        let trigger = format!("admin API, caller {:?}", caller(&request));
        let r = request.into_inner();
        let core = self.core.clone();
        // Reading and uploading the weights blocks; the core serialises admin calls.
        let change = tokio::task::spawn_blocking(move || {
            core.load_adapter(&r.name, std::path::Path::new(&r.dir), r.replace, &trigger)
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("adapter load thread failed: {e}")))??;
        Ok(Response::new(pb::LoadAdapterResponse {
            took_ms: change.took.as_secs_f64() * 1e3,
            adapter: Some(adapter_to_proto(change.adapter)),
            replaced: change.replaced.map(adapter_to_proto),
        }))
    }

    async fn unload_adapter(
        &self,
        request: Request<pb::UnloadAdapterRequest>,
    ) -> Result<Response<pb::UnloadAdapterResponse>, Status> {
        let trigger = format!("admin API, caller {:?}", caller(&request));
        let name = request.into_inner().name;
        let core = self.core.clone();
        // Waits on the admin lock, which a load may hold for a while.
        let AdapterChange { adapter, .. } =
            tokio::task::spawn_blocking(move || core.unload_adapter(&name, &trigger))
                .await
                .map_err(|e| {
                    ServiceError::Internal(format!("adapter unload thread failed: {e}"))
                })??;
        Ok(Response::new(pb::UnloadAdapterResponse {
            adapter: Some(adapter_to_proto(adapter)),
        }))
    }
}

fn adapter_to_proto(a: AdapterListing) -> pb::Adapter {
    pb::Adapter {
        name: a.name,
        merged: a.merged,
        is_default: a.is_default,
        dir: a.dir,
        generation: a.generation,
        rank: a.rank as u32,
        projections: a.projections as u32,
        parameters: a.parameters as u64,
        loaded_unix_ms: a.loaded_unix_ms as i64,
    }
}
