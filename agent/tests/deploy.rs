//! Shipping (issue 15, items 1-3): the Kubernetes manifests pass a schema validator and the
//! rules a validator cannot know (no privilege beyond the four capabilities, read-only host
//! mounts, probes on the health paths, a ConfigMap the agent accepts); the systemd unit passes
//! `systemd-analyze verify` and grants the same four; the `.deb` installs into a temporary
//! root from which `herdwatch check` passes.
mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use herdwatch::{Config, check::capabilities, export::resource::DOWNWARD_API};
use serde_json::Value;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn kubernetes_dir() -> PathBuf {
    repo_root().join("deploy/kubernetes")
}

fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(kubernetes_dir())
        .expect("deploy/kubernetes exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// A program of the test venv (`cargo xtask test` installs kubernetes-validate there from
/// agent/tests/apps/requirements.txt, with PyYAML as its dependency).
fn venv_program(name: &str) -> PathBuf {
    let program = common::venv().join("bin").join(name);
    assert!(
        program.exists(),
        "{} missing — `cargo xtask test` installs agent/tests/apps/requirements.txt into the venv",
        program.display()
    );
    program
}

/// Every document of every manifest, as JSON (PyYAML reads the YAML, the same parser the
/// validator uses, so both see the same documents).
fn documents() -> Vec<Value> {
    let script = "import json, sys, yaml\n\
                  docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]\n\
                  json.dump(docs, sys.stdout)";
    let out = Command::new(venv_program("python"))
        .args(["-c", script])
        .args(manifest_files())
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "reading the manifests: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("the manifests as JSON")
}

fn document<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "exactly one {kind}");
    found[0]
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The four capabilities as Kubernetes spells them (`BPF`, `DAC_READ_SEARCH`, …).
fn needed_for_kubernetes() -> BTreeSet<String> {
    capabilities::NEEDED
        .iter()
        .map(|c| c.name.trim_start_matches("CAP_").to_string())
        .collect()
}

fn needed_for_systemd() -> BTreeSet<String> {
    capabilities::NEEDED
        .iter()
        .map(|c| c.name.to_string())
        .collect()
}

#[test]
fn kubernetes_manifests_pass_the_schema_validator() {
    let files = manifest_files();
    assert!(
        files.len() >= 5,
        "namespace, account, config, daemonset, service: {files:?}"
    );
    let out = Command::new(venv_program("kubernetes-validate"))
        .args(["--strict", "--quiet"])
        .args(&files)
        .output()
        .expect("kubernetes-validate runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "the schema validator refused:\n{text}"
    );
    let kinds: BTreeSet<String> = documents()
        .iter()
        .filter_map(|d| d["kind"].as_str().map(str::to_string))
        .collect();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "DaemonSet",
        "Service",
    ] {
        assert!(kinds.contains(kind), "a {kind} among {kinds:?}");
    }
}

/// The ConfigMap's config.toml, parsed and validated the way the agent does at start.
fn configmap_config(docs: &[Value]) -> Config {
    let text = document(docs, "ConfigMap")["data"]["config.toml"]
        .as_str()
        .expect("the ConfigMap holds config.toml");
    let config = Config::from_toml(text, "ConfigMap herdwatch-config")
        .unwrap_or_else(|e| panic!("the agent refuses the ConfigMap's config: {e}"));
    config
        .validate("ConfigMap herdwatch-config")
        .unwrap_or_else(|e| panic!("{e}"));
    config
        .check_api_listen()
        .unwrap_or_else(|e| panic!("the API's TCP listener: {e}"));
    config
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr} has a port"))
}

#[test]
fn daemonset_holds_only_the_four_capabilities_and_read_only_host_mounts() {
    let docs = documents();
    let config = configmap_config(&docs);
    let daemonset = document(&docs, "DaemonSet");
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "workers are the node's processes");
    assert_ne!(
        pod["hostNetwork"], true,
        "no host network: the pod IP serves the Service"
    );
    assert_eq!(
        pod["automountServiceAccountToken"], false,
        "no API token: none is used"
    );
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let security = &container["securityContext"];
    assert_ne!(security["privileged"], true, "never privileged");
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(
        strings(&security["capabilities"]["drop"]),
        BTreeSet::from(["ALL".to_string()])
    );
    assert_eq!(
        strings(&security["capabilities"]["add"]),
        needed_for_kubernetes(),
        "exactly the measured set"
    );
    assert!(
        pod["initContainers"].is_null(),
        "no other container with other rights"
    );

    // The config the container runs with is the ConfigMap's.
    let args = strings(&container["args"]);
    let mounts = container["volumeMounts"].as_array().expect("volumeMounts");
    let config_mount = mounts
        .iter()
        .find(|m| m["name"] == "config")
        .expect("the ConfigMap is mounted");
    let config_path = config_mount["mountPath"].as_str().expect("mountPath");
    assert!(
        args.contains(config_path),
        "--config {config_path} in {args:?}"
    );

    // Probes on the metrics listener, which the ConfigMap opens on the pod IP.
    let metrics_port = port_of(config.prometheus_listen.as_deref().expect("/metrics on"));
    assert_eq!(config.prometheus_listen.as_deref(), Some("0.0.0.0:9464"));
    let ports = container["ports"].as_array().expect("ports");
    let port_named = |name: &str| {
        ports
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("a container port named {name}"))
    };
    assert_eq!(port_named("metrics"), metrics_port);
    let api_listen = config.api_listen.as_deref().expect("the API on TCP");
    assert_eq!(port_named("grpc-api"), port_of(api_listen));
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        let port = &get["port"];
        assert!(
            port.as_u64() == Some(metrics_port)
                || port.as_str().map(port_named) == Some(metrics_port),
            "{probe} on the metrics port: {port}"
        );
    }

    let resources = &container["resources"];
    for bound in ["requests", "limits"] {
        for what in ["cpu", "memory"] {
            assert!(
                resources[bound][what].is_string(),
                "resources.{bound}.{what}"
            );
        }
    }

    // The downward API for every k8s.* attribute the pod can know of itself.
    let env = container["env"].as_array().expect("env");
    for (variable, _) in DOWNWARD_API
        .iter()
        .filter(|(v, _)| *v != "K8S_CLUSTER_NAME")
    {
        let var = env
            .iter()
            .find(|e| e["name"] == *variable)
            .unwrap_or_else(|| panic!("{variable} set"));
        assert!(
            var["valueFrom"]["fieldRef"]["fieldPath"].is_string(),
            "{variable}: {var}"
        );
    }

    // Host mounts: read-only, except the state directory the agent writes.
    let volumes = pod["volumes"].as_array().expect("volumes");
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("volume {name}"))
    };
    let state_dir = config.state_dir.clone().expect("state kept");
    let mut host_paths = BTreeSet::new();
    for mount in mounts {
        let name = mount["name"].as_str().expect("mount name");
        let path = mount["mountPath"].as_str().expect("mountPath");
        let host = &volume(name)["hostPath"]["path"];
        if let Some(host) = host.as_str() {
            host_paths.insert(host.to_string());
            if Path::new(path) == state_dir {
                assert_ne!(mount["readOnly"], true, "the state dir is written");
            } else {
                assert_eq!(mount["readOnly"], true, "hostPath {host} mounted read-only");
            }
        }
    }
    for needed in ["/sys/kernel/btf", "/sys/kernel/tracing", "/sys/fs/cgroup"] {
        assert!(
            host_paths.contains(needed),
            "{needed} mounted: {host_paths:?}"
        );
    }
    let mounted_at = |path: &Path| {
        mounts
            .iter()
            .filter_map(|m| m["mountPath"].as_str().map(|p| (p, &m["name"])))
            .find(|(p, _)| path.starts_with(p))
            .map(|(_, name)| volume(name.as_str().unwrap_or_default()))
            .unwrap_or_else(|| panic!("{} is on a mounted volume", path.display()))
    };
    // The socket's directory is writable although the root filesystem is not.
    let socket = config.api_socket.clone().expect("the local API");
    assert!(
        mounted_at(&socket)["emptyDir"].is_object(),
        "{}",
        socket.display()
    );
    assert!(
        mounted_at(&state_dir)["hostPath"].is_object(),
        "state on the node"
    );
    for secret_file in [
        &config.api_tls_cert,
        &config.api_tls_key,
        &config.api_token_file,
    ] {
        let file = secret_file.as_deref().expect("TLS and token configured");
        assert!(
            mounted_at(file)["secret"].is_object(),
            "{} comes from a Secret",
            file.display()
        );
    }

    // The headless Service selects the agent's pods and publishes both ports by name.
    let service = document(&docs, "Service");
    assert_eq!(service["spec"]["clusterIP"], "None", "headless");
    let labels = &daemonset["spec"]["template"]["metadata"]["labels"];
    for (key, value) in service["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(
            &labels[key], value,
            "the Service selects the DaemonSet's pods"
        );
    }
    let service_ports: BTreeSet<String> = service["spec"]["ports"]
        .as_array()
        .expect("service ports")
        .iter()
        .filter_map(|p| p["targetPort"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        service_ports,
        BTreeSet::from(["metrics".to_string(), "grpc-api".to_string()])
    );
}

fn unit_path() -> PathBuf {
    repo_root().join("deploy/systemd/herdwatch.service")
}

/// The values of every `key=` line of a unit (a key may repeat).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_string())
        .collect()
}

fn words(values: &[String]) -> BTreeSet<String> {
    values
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

#[test]
fn systemd_unit_verifies_and_grants_the_same_four() {
    let unit = std::fs::read_to_string(unit_path()).expect("the unit");
    let one = |key: &str| {
        let values = unit_values(&unit, key);
        assert_eq!(values.len(), 1, "one {key}= line");
        values[0].clone()
    };
    assert_eq!(
        words(&unit_values(&unit, "AmbientCapabilities")),
        needed_for_systemd()
    );
    assert_eq!(
        words(&unit_values(&unit, "CapabilityBoundingSet")),
        needed_for_systemd()
    );
    assert_eq!(one("User"), "herdwatch");
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("StateDirectory", "herdwatch"),
        ("RuntimeDirectory", "herdwatch"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(one(key), value, "{key}");
    }
    assert!(
        one("ExecReload").contains("-HUP $MAINPID"),
        "reload is SIGHUP"
    );
    let families = words(&unit_values(&unit, "RestrictAddressFamilies"));
    for family in ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"] {
        assert!(families.contains(family), "{family} allowed: {families:?}");
    }
    // The paths the unit gives the agent are the ones its directories hold.
    let exec = one("ExecStart");
    assert!(exec.starts_with("/usr/bin/herdwatch "), "{exec}");
    assert!(
        exec.contains("--config /etc/herdwatch/config.toml"),
        "{exec}"
    );
    let host_config = config_file(&repo_root().join("deploy/config/config.toml"));
    assert_eq!(
        host_config.api_socket.as_deref(),
        Some(Path::new("/run/herdwatch/api.sock")),
        "the socket in RuntimeDirectory"
    );
    assert_eq!(
        host_config.state_dir.as_deref(),
        Some(Path::new("/var/lib/herdwatch")),
        "state in StateDirectory"
    );

    let Ok(analyze) = which("systemd-analyze") else {
        common::skip(
            "systemd_unit_verifies_and_grants_the_same_four",
            "systemd-analyze not installed (cargo xtask test installs the systemd package)",
        );
        return;
    };
    // verify resolves ExecStart: point it at the binary just built.
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("herdwatch.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/herdwatch", env!("CARGO_BIN_EXE_herdwatch")),
    )
    .expect("write unit copy");
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{said}"
    );
    // verify exits 0 on an unknown or unparsable key (it only logs "ignoring"): any word
    // from it is a defect of the unit.
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify warned:\n{said}"
    );
}

fn which(program: &str) -> Result<PathBuf, String> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{program} not on PATH"))
}

/// `cargo deb` works here (cargo-deb installed).
fn cargo_deb_available() -> bool {
    Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn deb_installs_into_a_temporary_root_and_check_passes_from_it() {
    let name = "deb_installs_into_a_temporary_root_and_check_passes_from_it";
    if !cargo_deb_available() {
        common::skip(
            name,
            "cargo-deb not installed (cargo xtask test installs it)",
        );
        return;
    }
    if which("dpkg-deb").is_err() {
        common::skip(
            name,
            "dpkg-deb not installed (cargo xtask test installs dpkg)",
        );
        return;
    }
    // Package the binary this test run built rather than building release a second time:
    // staged as <target>/release/herdwatch of a target directory of its own, where
    // `cargo deb --no-build` looks for it (cargo-deb refuses debug profiles).
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("target");
    std::fs::create_dir_all(target.join("release")).expect("mkdir release");
    let staged = target.join("release/herdwatch");
    let built = PathBuf::from(env!("CARGO_BIN_EXE_herdwatch"));
    if std::fs::hard_link(&built, &staged).is_err() {
        std::fs::copy(&built, &staged).expect("stage the binary");
    }
    let deb = dir.path().join("herdwatch.deb");
    let out = Command::new("cargo")
        // Stripped, and compressed by the system's xz at its fastest: cargo-deb's own
        // compressor takes a minute on this binary, xz -1 seconds.
        .args(["deb", "--package", "herdwatch", "--no-build"])
        .args(["--strip", "--fast", "--compress-system"])
        // cargo-deb takes the target directory from cargo, which takes it from here.
        .env("CARGO_TARGET_DIR", &target)
        .arg("--output")
        .arg(&deb)
        .current_dir(repo_root())
        .output()
        .expect("cargo deb runs");
    assert!(
        out.status.success(),
        "cargo deb: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The control part: dependencies, the conffile, and a postinst that makes the user and
    // enables the unit.
    let control = dir.path().join("control");
    let status = Command::new("dpkg-deb")
        .arg("--control")
        .arg(&deb)
        .arg(&control)
        .status()
        .expect("dpkg-deb runs");
    assert!(status.success(), "dpkg-deb --control");
    let fields = std::fs::read_to_string(control.join("control")).expect("control file");
    assert!(fields.contains("Package: herdwatch"), "{fields}");
    assert!(
        fields
            .lines()
            .any(|l| l.starts_with("Depends:") && l.contains("adduser")),
        "{fields}"
    );
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap_or_default();
    assert!(
        conffiles.lines().any(|l| l == "/etc/herdwatch/config.toml"),
        "{conffiles:?}"
    );
    let postinst = std::fs::read_to_string(control.join("postinst")).expect("a postinst");
    assert!(
        postinst.contains("adduser --system"),
        "the user is made:\n{postinst}"
    );
    assert!(
        postinst.contains("herdwatch.service"),
        "the unit is enabled:\n{postinst}"
    );

    // The files, unpacked into a temporary root.
    let root = dir.path().join("root");
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .status()
        .expect("dpkg-deb runs");
    assert!(status.success(), "dpkg-deb -x");
    let unit = ["lib/systemd/system", "usr/lib/systemd/system"]
        .iter()
        .map(|d| root.join(d).join("herdwatch.service"))
        .find(|p| p.exists())
        .expect("the unit is packaged");
    assert_eq!(
        std::fs::read_to_string(unit).expect("packaged unit"),
        std::fs::read_to_string(unit_path()).expect("unit"),
        "the packaged unit is deploy/systemd/herdwatch.service"
    );
    assert!(
        root.join("usr/share/doc/herdwatch/README.md").exists(),
        "docs packaged"
    );
    assert!(
        root.join("usr/share/doc/herdwatch/kubernetes/daemonset.yaml")
            .exists(),
        "manifests packaged"
    );
    let config = root.join("etc/herdwatch/config.toml");
    config_file(&config);

    let installed = root.join("usr/bin/herdwatch");
    let version = Command::new(&installed)
        .arg("version")
        .output()
        .expect("the packaged binary runs");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("herdwatch {}", env!("CARGO_PKG_VERSION"))
    );
    if !common::kernel_available(name) {
        return;
    }
    let check = Command::new(&installed)
        .arg("--config")
        .arg(&config)
        .arg("check")
        .output()
        .expect("check runs");
    let said = String::from_utf8_lossy(&check.stdout);
    eprintln!("{said}");
    assert!(
        check.status.success(),
        "check from the packaged binary:\n{said}"
    );
}

/// buildah with its storage under `root` (vfs: no overlay mounts to clean up), so the test
/// leaves nothing in the machine's image store.
fn buildah(root: &Path) -> Command {
    let mut cmd = Command::new("buildah");
    cmd.arg("--storage-driver=vfs")
        .arg("--root")
        .arg(root.join("storage"))
        .arg("--runroot")
        .arg(root.join("runroot"));
    cmd
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The tree the Containerfile's build stage leaves in /rootfs, made the same way from the
/// binary this test run built: the binary (stripped), every library ldd names, the config.
fn runtime_tree(rootfs: &Path) {
    let binary = env!("CARGO_BIN_EXE_herdwatch");
    std::fs::create_dir_all(rootfs.join("usr/bin")).expect("mkdir");
    std::fs::create_dir_all(rootfs.join("etc/herdwatch")).expect("mkdir");
    std::fs::create_dir_all(rootfs.join("run/herdwatch")).expect("mkdir");
    std::fs::create_dir_all(rootfs.join("var/lib/herdwatch")).expect("mkdir");
    run_ok(
        Command::new("strip")
            .arg("-o")
            .arg(rootfs.join("usr/bin/herdwatch"))
            .arg(binary),
    );
    std::fs::copy(
        repo_root().join("deploy/config/config.toml"),
        rootfs.join("etc/herdwatch/config.toml"),
    )
    .expect("copy config");
    let libraries = run_ok(Command::new("ldd").arg(binary));
    for lib in libraries.split_whitespace().filter(|w| w.starts_with('/')) {
        let dest = rootfs.join(lib.trim_start_matches('/'));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).expect("mkdir lib dir");
        }
        // ldd names symlinks (libc.so.6 → …): the file itself goes in under that name.
        std::fs::copy(lib, &dest).unwrap_or_else(|e| panic!("copying {lib}: {e}"));
    }
}

#[test]
fn container_image_runtime_stage_builds_and_runs_from_scratch() {
    let name = "container_image_runtime_stage_builds_and_runs_from_scratch";
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        common::skip(
            name,
            "buildah needs root here (no subuid ranges for rootless)",
        );
        return;
    }
    if which("buildah").is_err() || which("ldd").is_err() || which("strip").is_err() {
        common::skip(
            name,
            "buildah, ldd or strip missing (cargo xtask test installs buildah)",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // The build stage's base image is on docker.io, which this machine cannot reach: the
    // stage named `build` is supplied as a build context holding what it would produce, so
    // buildah builds the Containerfile's runtime stage itself, unchanged.
    let stage = dir.path().join("build-stage");
    runtime_tree(&stage.join("rootfs"));
    let context = dir.path().join("context");
    std::fs::create_dir(&context).expect("mkdir context");
    let tag = format!("localhost/herdwatch-test:{}", std::process::id());
    run_ok(
        buildah(dir.path())
            .args(["build", "--quiet", "--pull=never"])
            .arg(format!("--build-context=build={}", stage.display()))
            .arg("--file")
            .arg(repo_root().join("Containerfile"))
            .args(["--tag", &tag])
            .arg(&context),
    );
    let entrypoint = run_ok(
        buildah(dir.path())
            .args(["inspect", "--type", "image", "--format"])
            .arg("{{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.User}}")
            .arg(&tag),
    );
    assert_eq!(entrypoint.trim(), "[/usr/bin/herdwatch] 0:0");

    // No OCI runtime needed to prove the image self-contained: its root filesystem, entered
    // with chroot, runs the agent with nothing from the host.
    let container = run_ok(buildah(dir.path()).args(["from", "--pull=never"]).arg(&tag));
    let container = container.trim();
    let mounted = run_ok(buildah(dir.path()).arg("mount").arg(container));
    let version = run_ok(
        Command::new("chroot")
            .arg(mounted.trim())
            .args(["/usr/bin/herdwatch", "version"]),
    );
    assert_eq!(
        version.trim(),
        format!("herdwatch {}", env!("CARGO_PKG_VERSION"))
    );
    let files = run_ok(
        Command::new("find")
            .arg(mounted.trim())
            .args(["-type", "f"]),
    );
    eprintln!("image files:\n{files}");
    assert!(
        !files.contains("/bin/sh"),
        "nothing but the agent, its libraries and config"
    );
    let _ = buildah(dir.path()).arg("umount").arg(container).output();
    let _ = buildah(dir.path()).arg("rm").arg(container).output();
}

/// The config in `path`, read and validated as the agent reads a `--config` file.
fn config_file(path: &Path) -> Config {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Config::from_toml(&text, &path.display().to_string())
        .unwrap_or_else(|e| panic!("the packaged config: {e}"))
}
