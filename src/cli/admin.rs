//! `palr admin`: the admin API of a running server (`server.admin_addr`, a token with the
//! `admin` scope in PALR_TOKEN), one call per invocation; a table, or `--json`.

use anyhow::Context;

use crate::service::client::AdminClient;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum AdminCmd {
    /// Reload the retrievers from the server's configuration file ([retrieval]): every plugin
    /// re-opened and re-fitted, swapped in together; on any failure the running ones stay.
    /// (SIGHUP to `palr serve` does the same.)
    ReloadRetrievers(AdminArgs),
    /// Reload the data set from the server's [data] directory: new items and interactions
    /// served, every retriever re-fitted on the new data, swapped in together with the
    /// catalog; on any failure (a bad file, a retriever refusing the data) the running data
    /// stays.
    ReloadData(AdminArgs),
    /// List the model's LoRA adapters (merged or not, the default, rank, generation).
    ListAdapters(AdminArgs),
    /// Load a PEFT LoRA directory on the server as an adapter requests may name, without a
    /// restart (the directory must lie inside one of [model] adapter_dirs).
    LoadAdapter {
        /// The name requests will use in `adapter`.
        name: String,
        /// The adapter directory, as a path on the server.
        dir: String,
        /// Swap an adapter already loaded under NAME for this one (requests running keep
        /// the old one).
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        args: AdminArgs,
    },
    /// Unload an adapter: later requests naming it are refused; running ones finish on it.
    UnloadAdapter {
        name: String,
        #[command(flatten)]
        args: AdminArgs,
    },
}

impl AdminCmd {
    fn args(&self) -> &AdminArgs {
        match self {
            AdminCmd::ReloadRetrievers(args)
            | AdminCmd::ReloadData(args)
            | AdminCmd::ListAdapters(args)
            | AdminCmd::LoadAdapter { args, .. }
            | AdminCmd::UnloadAdapter { args, .. } => args,
        }
    }
}

/// What every admin command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// The server's admin address [server.admin_addr].
    #[arg(long, default_value = "http://127.0.0.1:50052")]
    pub addr: String,
    #[command(flatten)]
    pub connect: super::connect::ConnectArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: &AdminCmd) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(cmd))
}

/// A fingerprint's first 12 hex digits, as logs and errors write it.
fn short(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(12)]
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "-".to_owned()
    } else {
        names.join(", ")
    }
}

async fn run_async(cmd: &AdminCmd) -> anyhow::Result<()> {
    let args = cmd.args();
    let mut client = AdminClient::connect_with(&args.addr, &args.connect.options()).await?;
    match cmd {
        AdminCmd::ReloadRetrievers(_) => {
            let r = client.reload_retrievers().await?;
            if args.json {
                println!("{}", serde_json::to_string(&r)?);
                return Ok(());
            }
            println!(
                "{:<12} {:<34} {:<14} {:<10} {:>10}",
                "name", "library", "plugin", "version", "generation"
            );
            for l in &r.retrievers {
                println!(
                    "{:<12} {:<34} {:<14} {:<10} {:>10}{}",
                    l.name,
                    l.library_file,
                    l.plugin_name,
                    l.plugin_version,
                    l.generation,
                    if l.loaded_from_copy {
                        "  (changed on disk: a copy was loaded)"
                    } else {
                        ""
                    }
                );
            }
            println!("fusions {}", list(&r.fusions));
            println!("default {}", r.default_retriever);
            println!("added {}; removed {}", list(&r.added), list(&r.removed));
            if !r.not_reloaded.is_empty() {
                println!(
                    "not reloaded (changed in the configuration, need a restart): {}",
                    r.not_reloaded.join(", ")
                );
            }
            println!("reloaded in {:.0} ms", r.took_ms);
        }
        AdminCmd::ReloadData(_) => {
            let r = client.reload_data().await?;
            if args.json {
                println!("{}", serde_json::to_string(&r)?);
                return Ok(());
            }
            let (b, a) = (&r.before, &r.after);
            println!("{:<14} {:>10} {:>10}", "", "before", "now");
            println!("{:<14} {:>10} {:>10}", "items", b.items, a.items);
            println!("{:<14} {:>10} {:>10}", "users", b.users, a.users);
            println!(
                "{:<14} {:>10} {:>10}",
                "interactions", b.interactions, a.interactions
            );
            if a.skipped_unknown_items > 0 {
                println!(
                    "skipped {} interactions with items not in the catalog",
                    a.skipped_unknown_items
                );
            }
            println!("items added {}, removed {}", r.items_added, r.items_removed);
            println!(
                "training view {} {} (was {})",
                r.training_view_stage,
                short(&r.training_view_fingerprint),
                short(&r.previous_training_view_fingerprint)
            );
            for l in &r.retrievers {
                println!(
                    "re-fitted {} (generation {}){}",
                    l.name,
                    l.generation,
                    if l.stale_snapshot {
                        format!(
                            ": pre-trained on an older snapshot of the data, retrain it ({})",
                            l.note
                        )
                    } else {
                        String::new()
                    }
                );
            }
            println!("reloaded in {:.0} ms", r.took_ms);
        }
        AdminCmd::ListAdapters(_) => {
            let (adapters, default) = client.list_adapters().await?;
            if args.json {
                let v = serde_json::json!({ "adapters": adapters, "default_adapter": default });
                println!("{v}");
                return Ok(());
            }
            if adapters.is_empty() {
                println!("no adapters: requests rank with the model as loaded");
                return Ok(());
            }
            println!(
                "{:<24} {:<7} {:<7} {:>4} {:>10}  dir",
                "name", "merged", "default", "rank", "generation"
            );
            for a in &adapters {
                println!(
                    "{:<24} {:<7} {:<7} {:>4} {:>10}  {}",
                    a.name,
                    if a.merged { "yes" } else { "no" },
                    if a.is_default { "yes" } else { "no" },
                    a.rank,
                    a.generation,
                    a.dir
                );
            }
        }
        AdminCmd::LoadAdapter {
            name, dir, replace, ..
        } => {
            let c = client.load_adapter(name, dir, *replace).await?;
            if args.json {
                println!("{}", serde_json::to_string(&c)?);
                return Ok(());
            }
            if let Some(a) = &c.adapter {
                println!(
                    "loaded {} (generation {}, rank {}, {} projections) from {} in {:.0} ms",
                    a.name, a.generation, a.rank, a.projections, a.dir, c.took_ms
                );
            }
            if let Some(r) = &c.replaced {
                println!(
                    "replaced generation {} (from {}): requests running on it finish on it",
                    r.generation, r.dir
                );
            }
        }
        AdminCmd::UnloadAdapter { name, .. } => {
            let c = client.unload_adapter(name).await?;
            if args.json {
                println!("{}", serde_json::to_string(&c)?);
                return Ok(());
            }
            if let Some(a) = &c.adapter {
                println!(
                    "unloaded {} (generation {}): requests running on it finish on it",
                    a.name, a.generation
                );
            }
        }
    }
    Ok(())
}
