//! Grafana's side of the herdwatch datasource, as Grafana itself talks to a backend plugin:
//! start `gpx_herdwatch_linux_amd64` with Grafana's environment, read the go-plugin handshake
//! from its stdout, and call it with the SDK's `pluginv2` gRPC clients; decode the Arrow
//! frames it answers with. Shared by the datasource harness and any test that runs dashboard
//! targets through QueryData (`Plugin::query`).
#![allow(dead_code)]

use std::{
    collections::HashMap,
    io::BufRead as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use grafana_plugin_sdk::{
    arrow2,
    pluginv2::{
        self, data_client::DataClient, diagnostics_client::DiagnosticsClient,
        resource_client::ResourceClient, stream_client::StreamClient,
    },
};

use super::common::Proc;

pub const PLUGIN_ID: &str = "herdwatch-fleet-datasource";

/// The plugin binary in this test's own target directory, built first when it is missing
/// or older than any of its sources (the backend crate and the .proto files). A fresh binary
/// is used as it is: a nested `cargo build` from inside `cargo test` resolves features for
/// one package only and can make the outer build recompile shared dependencies next time.
pub fn plugin_binary() -> PathBuf {
    // target/<profile>/deps/<this test> → target/<profile>/
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let binary = profile_dir.join("gpx_herdwatch_linux_amd64");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = std::fs::metadata(&binary).and_then(|m| m.modified()).ok();
    let sources = [
        workspace.join("datasource/backend/src"),
        workspace.join("datasource/backend/Cargo.toml"),
        workspace.join("proto/herdwatch"),
        workspace.join("proto/src"),
        workspace.join("Cargo.lock"),
    ];
    if built.is_some_and(|built| sources.iter().all(|s| newest(s) <= built)) {
        return binary;
    }
    let target_dir = profile_dir.parent().expect("target dir");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(&workspace)
        .args([
            "build",
            "-q",
            "-p",
            "herdwatch-datasource",
            "--bin",
            "gpx_herdwatch_linux_amd64",
        ])
        .env("CARGO_TARGET_DIR", target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("cargo runs");
    assert!(status.success(), "building the datasource plugin failed");
    binary
}

/// The latest modification time of `path` or anything under it.
fn newest(path: &Path) -> std::time::SystemTime {
    let own = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(std::time::UNIX_EPOCH);
    let Ok(entries) = std::fs::read_dir(path) else {
        return own;
    };
    entries
        .flatten()
        .map(|e| newest(&e.path()))
        .fold(own, std::cmp::max)
}

/// The plugin process and its gRPC address.
pub struct Plugin {
    pub proc: Proc,
    pub url: String,
    /// `jsonData` and decrypted `secureJsonData` of the datasource instance.
    pub json_data: serde_json::Value,
    pub secure: HashMap<String, String>,
}

impl Plugin {
    /// Starts the plugin exactly as Grafana does and reads its handshake line,
    /// `1|2|tcp|127.0.0.1:PORT|grpc`.
    pub fn start(json_data: serde_json::Value, secure: HashMap<String, String>) -> Self {
        let mut cmd = Command::new(plugin_binary());
        cmd.env_clear()
            .env("grafana_plugin_type", "datasource")
            .env("PLUGIN_PROTOCOL_VERSIONS", "2")
            .env("GF_PLUGIN_GRPC_MAX_MESSAGE_SIZE", "104857600");
        let mut proc = Proc::spawn(&mut cmd);
        let mut line = String::new();
        proc.stdout
            .as_mut()
            .expect("stdout piped")
            .read_line(&mut line)
            .expect("the handshake line");
        let parts: Vec<&str> = line.trim().split('|').collect();
        assert_eq!(
            (
                parts.len(),
                parts.first(),
                parts.get(1),
                parts.get(2),
                parts.get(4)
            ),
            (5, Some(&"1"), Some(&"2"), Some(&"tcp"), Some(&"grpc")),
            "go-plugin handshake: {line:?}"
        );
        Self {
            proc,
            url: format!("http://{}", parts[3]),
            json_data,
            secure,
        }
    }

    pub fn context(&self) -> pluginv2::PluginContext {
        pluginv2::PluginContext {
            org_id: 1,
            plugin_id: PLUGIN_ID.into(),
            data_source_instance_settings: Some(pluginv2::DataSourceInstanceSettings {
                id: 1,
                uid: "herdwatch".into(),
                name: "herdwatch".into(),
                json_data: serde_json::to_vec(&self.json_data).expect("JSON"),
                decrypted_secure_json_data: self.secure.clone(),
                last_updated_ms: 1,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub async fn check_health(&self) -> pluginv2::CheckHealthResponse {
        let mut client = DiagnosticsClient::connect(self.url.clone())
            .await
            .expect("diagnostics client");
        client
            .check_health(pluginv2::CheckHealthRequest {
                plugin_context: Some(self.context()),
                ..Default::default()
            })
            .await
            .expect("CheckHealth")
            .into_inner()
    }

    /// Runs one target (the JSON a panel stores) through QueryData over the last
    /// `range_ms`, and decodes its frames.
    pub async fn query(
        &self,
        target: serde_json::Value,
        range_ms: i64,
        interval_ms: i64,
    ) -> Answer {
        let mut client = DataClient::connect(self.url.clone())
            .await
            .expect("data client");
        let to = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64;
        let ref_id = target["refId"].as_str().unwrap_or("A").to_string();
        let query = pluginv2::DataQuery {
            ref_id: ref_id.clone(),
            max_data_points: 1000,
            interval_ms,
            time_range: Some(pluginv2::TimeRange {
                from_epoch_ms: to - range_ms,
                to_epoch_ms: to,
            }),
            query_type: target["queryType"].as_str().unwrap_or_default().to_string(),
            json: serde_json::to_vec(&target).expect("JSON"),
        };
        let mut response = client
            .query_data(pluginv2::QueryDataRequest {
                plugin_context: Some(self.context()),
                queries: vec![query],
                ..Default::default()
            })
            .await
            .expect("QueryData")
            .into_inner();
        let answer = response
            .responses
            .remove(&ref_id)
            .expect("an answer for the query's refId");
        Answer {
            error: answer.error,
            frames: answer.frames.iter().map(|f| decode(f)).collect(),
        }
    }

    /// A CallResource GET of `url` (`hosts`, `routes?pool=…`): status and JSON body.
    pub async fn resource(&self, url: &str) -> (i32, serde_json::Value) {
        let mut client = ResourceClient::connect(self.url.clone())
            .await
            .expect("resource client");
        let path = url.split('?').next().unwrap_or_default().to_string();
        let mut stream = client
            .call_resource(pluginv2::CallResourceRequest {
                plugin_context: Some(self.context()),
                path,
                method: "GET".into(),
                url: url.into(),
                ..Default::default()
            })
            .await
            .expect("CallResource")
            .into_inner();
        let first = stream
            .message()
            .await
            .expect("a resource answer")
            .expect("not empty");
        let body = serde_json::from_slice(&first.body).unwrap_or(serde_json::Value::Null);
        (first.code, body)
    }

    /// The RunStream of `path`, as Grafana opens it after a subscription.
    pub async fn run_stream(&self, path: &str) -> tonic_012::Streaming<pluginv2::StreamPacket> {
        let mut client = StreamClient::connect(self.url.clone())
            .await
            .expect("stream client");
        let sub = client
            .subscribe_stream(pluginv2::SubscribeStreamRequest {
                plugin_context: Some(self.context()),
                path: path.into(),
                ..Default::default()
            })
            .await
            .expect("SubscribeStream")
            .into_inner();
        assert_eq!(sub.status, 0, "subscription to {path} accepted");
        client
            .run_stream(pluginv2::RunStreamRequest {
                plugin_context: Some(self.context()),
                path: path.into(),
                ..Default::default()
            })
            .await
            .expect("RunStream")
            .into_inner()
    }
}

/// One query's answer: its error, or its frames.
#[derive(Debug)]
pub struct Answer {
    pub error: String,
    pub frames: Vec<Frame>,
}

/// A decoded Arrow frame: its name, metadata (notices), and each field's values as text.
#[derive(Debug)]
pub struct Frame {
    pub name: String,
    pub meta: serde_json::Value,
    pub fields: Vec<Field>,
}

#[derive(Debug)]
pub struct Field {
    pub name: String,
    pub data_type: arrow2::datatypes::DataType,
    pub values: Vec<String>,
}

impl Frame {
    pub fn field(&self, name: &str) -> &Field {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("frame {} has no field {name}: {self:#?}", self.name))
    }

    pub fn rows(&self) -> usize {
        self.fields.first().map_or(0, |f| f.values.len())
    }

    pub fn notices(&self) -> Vec<String> {
        self.meta["notices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["text"].as_str().map(str::to_string))
            .collect()
    }
}

/// Decodes one frame as Grafana does: Arrow IPC file format, the frame's name and meta in
/// the schema's metadata.
pub fn decode(bytes: &[u8]) -> Frame {
    use arrow2::io::ipc::read::{FileReader, read_file_metadata};
    let mut cursor = std::io::Cursor::new(bytes);
    let metadata = read_file_metadata(&mut cursor).expect("an Arrow IPC file");
    let schema = metadata.schema.clone();
    let mut fields: Vec<Field> = schema
        .fields
        .iter()
        .map(|f| Field {
            name: f.name.clone(),
            data_type: f.data_type.clone(),
            values: Vec::new(),
        })
        .collect();
    for chunk in FileReader::new(cursor, metadata, None, None) {
        let chunk = chunk.expect("an Arrow record batch");
        for (field, array) in fields.iter_mut().zip(chunk.arrays()) {
            let display = arrow2::array::get_display(array.as_ref(), "null");
            for i in 0..array.len() {
                let mut text = String::new();
                display(&mut text, i).expect("display");
                field.values.push(text);
            }
        }
    }
    Frame {
        name: schema.metadata.get("name").cloned().unwrap_or_default(),
        meta: schema
            .metadata
            .get("meta")
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or(serde_json::Value::Null),
        fields,
    }
}

/// Reads stream packets (JSON frames) until `done` says so, within `timeout`.
pub async fn read_packets(
    stream: &mut tonic_012::Streaming<pluginv2::StreamPacket>,
    timeout: Duration,
    mut done: impl FnMut(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !done(&seen) {
        let next = tokio::time::timeout_at(deadline, stream.message()).await;
        match next {
            Ok(Ok(Some(packet))) => {
                seen.push(serde_json::from_slice(&packet.data).expect("a JSON frame"));
            }
            Ok(Ok(None)) => panic!("the stream ended; packets so far: {seen:#?}"),
            Ok(Err(status)) => panic!("the stream failed: {status}; packets so far: {seen:#?}"),
            Err(_) => panic!("not done within {timeout:?}; packets so far: {seen:#?}"),
        }
    }
    seen
}
