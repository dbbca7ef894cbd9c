//! The container image builds from the workspace as it is. No Docker engine is needed (none
//! runs here or in CI): the test copies the build context as `.dockerignore` lets it through
//! into a temporary directory, runs the builder stage's `RUN` commands there with `sh -c` as
//! Docker would, and checks that the binary the runtime stage copies out exists and runs,
//! including the subcommand HEALTHCHECK calls. It also checks that `docker-compose.yml` parses
//! and builds Tocsin from this Dockerfile.
//!
//! Cache mounts inside the stage's WORKDIR (the target directory) point at `target/image-build`
//! in this repository, so a re-run is incremental; those outside it (cargo's registry) are
//! played by this machine's cargo home. A first run is a full release build: minutes.

use globset::GlobMatcher;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One `.dockerignore` line: Docker's rules, with paths relative to the context root, `*`
/// not crossing `/`, `**` any number of directories, and `!` re-including.
struct Pattern {
    glob: GlobMatcher,
    include: bool,
}

fn dockerignore() -> Vec<Pattern> {
    std::fs::read_to_string(repository().join(".dockerignore"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (include, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let pattern = pattern.trim_start_matches('/').trim_end_matches('/');
            let glob = globset::GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .unwrap_or_else(|e| panic!(".dockerignore `{line}`: {e}"))
                .compile_matcher();
            Pattern { glob, include }
        })
        .collect()
}

/// Whether Docker leaves `relative` out of the context: the last pattern that matches it or
/// one of its parent directories decides.
fn ignored(patterns: &[Pattern], relative: &Path) -> bool {
    let prefixes: Vec<&Path> = relative
        .ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    patterns.iter().fold(false, |ignored, pattern| {
        if prefixes.iter().any(|p| pattern.glob.is_match(p)) {
            !pattern.include
        } else {
            ignored
        }
    })
}

/// Copies what the context holds from `from` (relative path `relative`) to `to`.
fn copy_context(patterns: &[Pattern], relative: &Path, to: &Path) {
    let re_includes = patterns.iter().any(|p| p.include);
    for entry in std::fs::read_dir(repository().join(relative)).unwrap() {
        let entry = entry.unwrap();
        let path = relative.join(entry.file_name());
        let excluded = ignored(patterns, &path);
        if entry.file_type().unwrap().is_dir() {
            // An excluded directory can hold nothing the context keeps, unless a `!` says so.
            if !excluded || re_includes {
                copy_context(patterns, &path, to);
            }
        } else if !excluded {
            std::fs::create_dir_all(to.join(&path).parent().unwrap()).unwrap();
            std::fs::copy(entry.path(), to.join(&path)).unwrap();
        }
    }
}

/// A Dockerfile's instructions (continuation lines joined, comments dropped), by stage name.
fn stages() -> Vec<(String, Vec<(String, String)>)> {
    let text = std::fs::read_to_string(repository().join("Dockerfile")).unwrap();
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => current.push_str(start),
            None => {
                current.push_str(line);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for instruction in joined.iter().filter(|i| !i.trim().is_empty()) {
        let (keyword, rest) = instruction.split_once(' ').unwrap();
        let (keyword, rest) = (keyword.to_ascii_uppercase(), rest.trim().to_owned());
        if keyword == "FROM" {
            let name = rest.split_whitespace().nth(2).unwrap_or("").to_owned();
            stages.push((name, Vec::new()));
        }
        stages.last_mut().unwrap().1.push((keyword, rest));
    }
    stages
}

/// A `RUN` instruction's `--mount` targets and its shell command.
fn run_parts(run: &str) -> (Vec<String>, String) {
    let mut rest = run.trim();
    let mut mounts = Vec::new();
    while let Some(flag) = rest.strip_prefix("--mount=") {
        let (options, after) = flag.split_once(char::is_whitespace).unwrap();
        let target = options
            .split(',')
            .find_map(|o| o.strip_prefix("target=").or_else(|| o.strip_prefix("dst=")))
            .unwrap_or_else(|| panic!("a mount without target: {options}"));
        mounts.push(target.to_owned());
        rest = after.trim_start();
    }
    (mounts, rest.to_owned())
}

#[test]
fn the_builder_stage_builds_a_working_binary_from_the_dockerignored_context() {
    let started = std::time::Instant::now();
    let context = tempfile::tempdir().unwrap();
    copy_context(&dockerignore(), Path::new(""), context.path());
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "src/main.rs",
        "schemas/openapi.json",
    ] {
        assert!(
            context.path().join(needed).exists(),
            "{needed} is left out of the context"
        );
    }
    for local in ["target", ".git", "tests", "data"] {
        assert!(
            !context.path().join(local).exists(),
            "{local} is in the context"
        );
    }

    let stages = stages();
    let (_, builder) = stages
        .iter()
        .find(|(name, _)| name == "builder")
        .expect("a stage named builder");
    let mut workdir = PathBuf::from("/");
    for (keyword, arguments) in builder {
        match keyword.as_str() {
            "FROM" | "ENV" | "ARG" => {}
            "WORKDIR" => workdir = workdir.join(arguments),
            "COPY" => assert_eq!(arguments, ". .", "the builder copies the whole context"),
            "RUN" => {
                let (mounts, command) = run_parts(arguments);
                // Cache mounts in the work directory are directories under target/, linked in
                // for this step only: like Docker's, they are not in the stage's files after it.
                let mut mounted = Vec::new();
                for target in mounts {
                    if let Ok(inside) = Path::new(&target).strip_prefix(&workdir) {
                        let cache = repository().join("target/image-build").join(inside);
                        std::fs::create_dir_all(&cache).unwrap();
                        let link = context.path().join(inside);
                        std::os::unix::fs::symlink(&cache, &link).unwrap();
                        mounted.push(link);
                    }
                }
                let mut shell = Command::new("sh");
                shell.arg("-c").arg(&command).current_dir(context.path());
                // As in the image: no target directory or profile from the test's cargo.
                for (name, _) in std::env::vars().filter(|(n, _)| {
                    (n.starts_with("CARGO_") && n != "CARGO_HOME") || n.starts_with("RUSTFLAGS")
                }) {
                    shell.env_remove(name);
                }
                let status = shell.status().unwrap();
                assert!(status.success(), "RUN {command}: {status}");
                for link in mounted {
                    std::fs::remove_file(link).unwrap();
                }
            }
            other => panic!("the test does not know how to run {other} {arguments}"),
        }
    }

    let (_, runtime) = stages.last().unwrap();
    let binary = runtime
        .iter()
        .find_map(|(keyword, arguments)| {
            let source = arguments.strip_prefix("--from=builder ")?;
            (keyword == "COPY").then(|| source.split_whitespace().next().unwrap().to_owned())
        })
        .expect("the runtime stage copies the binary from the builder");
    let binary = context
        .path()
        .join(Path::new(&binary).strip_prefix(&workdir).unwrap());
    assert!(
        binary.is_file(),
        "the builder stage leaves no {}",
        binary.display()
    );
    let version = Command::new(&binary).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("tocsin {}", env!("CARGO_PKG_VERSION"))
    );
    let healthcheck = runtime
        .iter()
        .find_map(|(keyword, arguments)| (keyword == "HEALTHCHECK").then_some(arguments))
        .expect("a HEALTHCHECK");
    let exec: Vec<String> = serde_json::from_str(
        healthcheck
            .split_once("CMD ")
            .expect("HEALTHCHECK … CMD [\"tocsin\", …]")
            .1,
    )
    .unwrap();
    assert_eq!(exec[0], "tocsin");
    let help = Command::new(&binary)
        .args(&exec[1..])
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        help.status.success(),
        "the image's binary has `{}`",
        exec[1..].join(" ")
    );
    eprintln!("image build steps took {:?}", started.elapsed());
}

#[test]
fn docker_compose_parses_and_builds_tocsin_from_this_dockerfile() {
    let text = std::fs::read_to_string(repository().join("docker-compose.yml")).unwrap();
    let documents = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
    let tocsin = &documents[0]["services"]["tocsin"];
    assert_eq!(
        tocsin["build"].as_str(),
        Some("."),
        "builds the repository's Dockerfile"
    );
    let healthcheck: Vec<&str> = tocsin["healthcheck"]["test"]
        .as_vec()
        .expect("a healthcheck")
        .iter()
        .map(|part| part.as_str().unwrap())
        .collect();
    assert_eq!(healthcheck, ["CMD", "tocsin", "healthcheck"]);
    for service in ["rabbitmq", "prometheus", "grafana"] {
        assert!(
            !documents[0]["services"][service].is_badvalue(),
            "{service}"
        );
    }
}

/// The compose profile `cluster`: PostgreSQL, three replicas on it and RabbitMQ under a bus
/// prefix of their own, a load balancer in front; the settings the replicas get (their
/// variables and the settings file the profile writes) are accepted by `tocsin check`.
#[test]
fn the_compose_cluster_profile_runs_three_replicas_on_one_store_behind_a_balancer() {
    let text = std::fs::read_to_string(repository().join("docker-compose.yml")).unwrap();
    let compose = &yaml_rust2::YamlLoader::load_from_str(&text).unwrap()[0];
    let services = &compose["services"];
    let in_cluster = |name: &str| {
        let profiles = services[name]["profiles"].as_vec().map(|p| p.to_vec());
        profiles.is_some_and(|p| p.iter().any(|p| p.as_str() == Some("cluster")))
    };
    for name in ["postgres", "tocsin-node", "load-balancer"] {
        assert!(in_cluster(name), "{name} is in the cluster profile");
    }
    assert!(
        !in_cluster("tocsin"),
        "the single process runs without the profile"
    );
    let node = &services["tocsin-node"];
    assert_eq!(node["deploy"]["replicas"].as_i64(), Some(3));
    assert_eq!(node["build"].as_str(), Some("."));
    let environment: Vec<(String, String)> = node["environment"]
        .as_hash()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_owned(),
                v.as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let variable = |name: &str| {
        environment
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(variable("TOCSIN_STORE_BACKEND"), Some("postgres"));
    assert_eq!(variable("TOCSIN_BUS_BACKEND"), Some("rabbitmq"));
    let single_prefix = services["tocsin"]["environment"]["TOCSIN_BUS_PREFIX"]
        .as_str()
        .unwrap_or("tocsin");
    assert_ne!(
        variable("TOCSIN_BUS_PREFIX"),
        Some(single_prefix),
        "the replicas never take the single process's work"
    );
    // Compose fills `${NAME:?…}` from the operator's environment; stand-ins here.
    let interpolate = |text: &str| {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}').expect("a closed ${…}") + start;
            let name = rest[start + 2..end].split(":?").next().unwrap();
            out.push_str(match name {
                "TOCSIN_CLUSTER_SECRET_KEY" => "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                _ => "stand-in-secret",
            });
            rest = &rest[end + 1..];
        }
        out + rest
    };
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("cluster.toml");
    let content = compose["configs"]["cluster-settings"]["content"]
        .as_str()
        .expect("the settings file the profile writes");
    std::fs::write(&settings, interpolate(content)).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tocsin"));
    for (name, _) in std::env::vars() {
        if name.starts_with("TOCSIN_") {
            command.env_remove(name);
        }
    }
    for (name, value) in &environment {
        if name != "TOCSIN_SETTINGS" {
            command.env(name, interpolate(value));
        }
    }
    let output = command
        .arg("check")
        .arg("--settings")
        .arg(&settings)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "tocsin check refuses the replicas' settings:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let nginx = std::fs::read_to_string(repository().join("deploy/cluster/nginx.conf")).unwrap();
    assert!(nginx.contains("server tocsin-node:8080;"), "{nginx}");
    let published = services["load-balancer"]["ports"][0].as_str().unwrap();
    let listen = published.rsplit(':').next().unwrap().trim_matches('"');
    assert!(nginx.contains(&format!("listen {listen};")), "{nginx}");
}
