//! The book's examples, checked (`docs/src`, an mdBook): every JSON action, condition,
//! subscription and configuration import in it is posted to a running Tocsin and must be
//! accepted; every `toml` block passes `tocsin check --settings`; every `yaml` block parses;
//! every `tocsin …` command, in a shell block or inline, names subcommands and flags that exist;
//! every page is in `SUMMARY.md`; and every relative link of the book and of the README points
//! to an existing page and heading (mdBook does not fail on a broken link).
//!
//! A `json` block that is not one of those four (an answer, an event) must still parse; write
//! what is not JSON as `text`. `{{#include FILE}}` lines inside a block are read as mdBook
//! reads them: the whole file, relative to the page.

use crate::common::{run_to_end, tocsin_command, Backend, Tocsin};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn book_source() -> PathBuf {
    repository().join("docs/src")
}

/// A Markdown file of the repository.
pub struct Page {
    /// Relative to the repository.
    pub path: PathBuf,
    pub text: String,
}

impl Page {
    fn read(path: &Path) -> Page {
        Page {
            path: path.strip_prefix(repository()).unwrap().to_owned(),
            text: std::fs::read_to_string(path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display())),
        }
    }
}

/// Every page of the book, `SUMMARY.md` included, in path order.
pub fn book_pages() -> Vec<Page> {
    let mut pages = Vec::new();
    let mut folders = vec![book_source()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                pages.push(Page::read(&path));
            }
        }
    }
    pages.sort_by(|a, b| a.path.cmp(&b.path));
    assert!(pages.len() > 10, "docs/src holds the book's pages");
    pages
}

/// A fenced code block.
pub struct Block {
    /// `page:line` of its opening fence.
    pub place: String,
    /// Its info string (`json`, `toml`, `sh`, …).
    pub language: String,
    /// Its text, indentation of a block in a list item removed, includes read.
    pub code: String,
}

/// The fenced code blocks of `page`.
pub fn blocks(page: &Page) -> Vec<Block> {
    struct Open {
        line: usize,
        indent: usize,
        language: String,
        lines: Vec<String>,
    }
    let mut done = Vec::new();
    let mut open: Option<Open> = None;
    for (n, line) in page.text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(mut block) = open.take() {
            if trimmed.starts_with("```") {
                done.push(Block {
                    place: format!("{}:{}", page.path.display(), block.line),
                    language: block.language,
                    code: block.lines.join("\n"),
                });
            } else {
                let cut = block.indent.min(line.len() - trimmed.len());
                block.lines.push(included(page, &line[cut..]));
                open = Some(block);
            }
        } else if let Some(info) = trimmed.strip_prefix("```") {
            open = Some(Open {
                line: n + 1,
                indent: line.len() - trimmed.len(),
                language: info.trim().to_owned(),
                lines: Vec::new(),
            });
        }
    }
    assert!(
        open.is_none(),
        "{}: a code block is never closed",
        page.path.display()
    );
    done
}

/// `line`, or the file it includes (`{{#include FILE}}`, relative to the page).
fn included(page: &Page, line: &str) -> String {
    let Some(file) = line
        .trim()
        .strip_prefix("{{#include ")
        .and_then(|rest| rest.strip_suffix("}}"))
    else {
        return line.to_owned();
    };
    let path = repository()
        .join(page.path.parent().unwrap())
        .join(file.trim());
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| {
            panic!(
                "{}: cannot include {}: {e}",
                page.path.display(),
                path.display()
            )
        })
        .trim_end()
        .to_owned()
}

/// What a JSON example is, for the configuration API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Entity {
    Action,
    Condition,
    Subscription,
    Import,
}

impl Entity {
    const ALL: [Entity; 4] = [
        Entity::Action,
        Entity::Condition,
        Entity::Subscription,
        Entity::Import,
    ];

    /// Its path under `/cf/configuration/v1/`.
    fn path(self) -> &'static str {
        match self {
            Entity::Action => "action",
            Entity::Condition => "condition",
            Entity::Subscription => "subscription",
            Entity::Import => "configuration",
        }
    }

    fn of(value: &Value) -> Option<Entity> {
        let object = value.as_object()?;
        if !object.get("name").is_some_and(Value::is_string) {
            let lists = ["actions", "conditions", "subscriptions"];
            let holds_entities = lists.iter().any(|list| {
                object
                    .get(*list)
                    .and_then(Value::as_array)
                    .is_some_and(|items| items.iter().any(Value::is_object))
            });
            return holds_entities.then_some(Entity::Import);
        }
        if object.contains_key("type") {
            Some(Entity::Action)
        } else if object.contains_key("predicate") {
            Some(Entity::Condition)
        } else if object.contains_key("actions") || object.contains_key("conditions") {
            Some(Entity::Subscription)
        } else {
            None
        }
    }
}

/// Every `json` block of `pages` that is a configuration entity: (place, entity, value). A
/// block that does not parse fails.
fn configuration_examples(pages: &[Page]) -> Vec<(String, Entity, Value)> {
    let mut examples = Vec::new();
    for page in pages {
        for block in blocks(page) {
            if block.language != "json" {
                continue;
            }
            let value: Value = serde_json::from_str(&block.code).unwrap_or_else(|e| {
                panic!(
                    "{}: a json block that is not JSON ({e}); mark it `text` if it is not meant to be:\n{}",
                    block.place, block.code
                )
            });
            if let Some(entity) = Entity::of(&value) {
                examples.push((block.place, entity, value));
            }
        }
    }
    examples
}

/// The copy-paste action of each channel page (`docs/src/channels/`).
pub fn channel_actions() -> Vec<Value> {
    let pages: Vec<Page> = book_pages()
        .into_iter()
        .filter(|page| page.path.starts_with("docs/src/channels"))
        .collect();
    configuration_examples(&pages)
        .into_iter()
        .filter(|(_, entity, value)| *entity == Entity::Action && value["type"].is_string())
        .map(|(_, _, value)| value)
        .collect()
}

/// Every action, condition, subscription and import the book shows is accepted, in that
/// order (a subscription names the book's conditions and actions; an import replaces all).
#[tokio::test]
async fn every_configuration_example_is_accepted() {
    let examples = configuration_examples(&book_pages());
    let tocsin = Tocsin::start(Backend::Embedded, &Value::Null, &[]).await;
    let mut counted: BTreeMap<Entity, usize> = BTreeMap::new();
    for entity in Entity::ALL {
        for (place, _, value) in examples.iter().filter(|(_, e, _)| *e == entity) {
            let response = tocsin
                .post(&format!("/cf/configuration/v1/{}", entity.path()), value)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let answer = response.text().await.unwrap();
            assert_eq!(
                status, 201,
                "{place}: the {entity:?} is refused: {answer}\n{value:#}"
            );
            *counted.entry(entity).or_default() += 1;
        }
    }
    for entity in Entity::ALL {
        assert!(
            counted.contains_key(&entity),
            "the book shows no {entity:?}: {counted:?}"
        );
    }
    assert!(counted[&Entity::Action] >= 10, "{counted:?}");
    tocsin.shutdown().await;
}

/// `command` without the `TOCSIN_*` settings of the environment the tests run in.
fn without_settings(mut command: Command) -> Command {
    for (name, _) in std::env::vars() {
        if name.starts_with("TOCSIN_") && name != "TOCSIN_LOG" {
            command.env_remove(name);
        }
    }
    command
}

/// Every `toml` block is settings that `tocsin check` accepts, and every `yaml` block parses.
#[test]
fn every_settings_example_passes_tocsin_check() {
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("settings.toml");
    let (mut toml, mut yaml) = (0, 0);
    for page in book_pages() {
        for block in blocks(&page) {
            match block.language.as_str() {
                "toml" => {
                    std::fs::write(&file, &block.code).unwrap();
                    let mut command = without_settings(tocsin_command());
                    command
                        .current_dir(scratch.path())
                        .args(["check", "--settings"])
                        .arg(&file);
                    let output = run_to_end(&mut command);
                    assert!(
                        output.status.success(),
                        "{}: `tocsin check --settings` refuses it:\n{}{}\n{}",
                        block.place,
                        String::from_utf8_lossy(&output.stdout),
                        String::from_utf8_lossy(&output.stderr),
                        block.code
                    );
                    toml += 1;
                }
                "yaml" => {
                    if let Err(e) = yaml_rust2::YamlLoader::load_from_str(&block.code) {
                        panic!("{}: not YAML ({e}):\n{}", block.place, block.code);
                    }
                    yaml += 1;
                }
                _ => {}
            }
        }
    }
    assert!(toml >= 2, "the book shows {toml} toml blocks");
    assert!(yaml >= 2, "the book shows {yaml} yaml blocks");
}

/// `tocsin <path> --help`, once per path.
struct Help(HashMap<Vec<String>, String>);

impl Help {
    fn of(&mut self, path: &[String]) -> &str {
        self.0.entry(path.to_vec()).or_insert_with(|| {
            let mut command = without_settings(tocsin_command());
            command.args(path).arg("--help");
            let output = run_to_end(&mut command);
            assert!(
                output.status.success(),
                "tocsin {path:?} --help: {output:?}"
            );
            String::from_utf8(output.stdout).unwrap()
        })
    }

    /// The subcommands that `help` lists.
    fn subcommands(help: &str) -> Vec<String> {
        help.lines()
            .skip_while(|line| line.trim() != "Commands:")
            .skip(1)
            .take_while(|line| !line.trim().is_empty())
            .filter_map(|line| line.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }

    /// Whether `help` lists `flag`, and whether it takes a value.
    fn flag(help: &str, flag: &str) -> Option<bool> {
        help.lines().find_map(|line| {
            let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
            let at = words.iter().position(|word| *word == flag)?;
            Some(words.get(at + 1).is_some_and(|next| next.starts_with('<')))
        })
    }
}

/// The `tocsin` command lines in `page`: in shell blocks (one per line, continuations joined,
/// comments dropped, pipelines split) and in inline code that starts with `tocsin `.
fn tocsin_commands(page: &Page) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    for block in blocks(page) {
        if !["sh", "bash", "shell", "console"].contains(&block.language.as_str()) {
            continue;
        }
        for line in block.code.replace("\\\n", " ").lines() {
            let line = line.split(" #").next().unwrap();
            if line.trim_start().starts_with('#') {
                continue;
            }
            for piece in line.split(['|', ';', '&', '(', ')']) {
                if let Some(words) = tocsin_words(piece) {
                    found.push((block.place.clone(), words));
                }
            }
        }
    }
    let prose = prose(&page.text);
    for (at, _) in prose.match_indices("`tocsin ") {
        let span = &prose[at + 1..];
        let span = &span[..span.find('`').unwrap_or(span.len())];
        if let Some(words) = tocsin_words(&span.replace('\n', " ")) {
            found.push((format!("{} (inline)", page.path.display()), words));
        }
    }
    found
}

/// The words after `tocsin` (or `cargo run … --`) when `command` runs it (after any `NAME=value`
/// assignments), up to a redirection; brackets of optional parts dropped.
fn tocsin_words(command: &str) -> Option<Vec<String>> {
    let words: Vec<&str> = command
        .split_whitespace()
        .skip_while(|w| w.contains('='))
        .collect();
    let first = *words.first()?;
    let start = if first == "tocsin" || first.ends_with("/tocsin") {
        1
    } else if first == "cargo" && words.get(1) == Some(&"run") {
        words.iter().position(|w| *w == "--")? + 1
    } else {
        return None;
    };
    Some(
        words[start..]
            .iter()
            .take_while(|w| !w.starts_with('>') && !w.starts_with('<'))
            .map(|w| w.trim_matches(['[', ']', '"', '\'']).to_owned())
            .filter(|w| !w.is_empty())
            .collect(),
    )
}

/// `text` without its fenced code blocks.
fn prose(text: &str) -> String {
    let mut inside = false;
    let mut kept = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            inside = !inside;
        } else if !inside {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    kept
}

/// Every `tocsin` command the book and the README show names subcommands that exist, and
/// flags that its `--help` lists.
#[test]
fn every_cli_example_names_real_subcommands_and_flags() {
    let mut help = Help(HashMap::new());
    let mut pages = book_pages();
    pages.push(Page::read(&repository().join("README.md")));
    let mut checked = 0;
    for page in &pages {
        for (place, words) in tocsin_commands(page) {
            let mut path: Vec<String> = Vec::new();
            let mut words = words.iter();
            while let Some(word) = words.next() {
                let text = help.of(&path).to_owned();
                if word.starts_with('-') {
                    let flag = word.split('=').next().unwrap();
                    let takes_value = Help::flag(&text, flag).unwrap_or_else(|| {
                        panic!("{place}: `tocsin {}` has no flag {flag}", path.join(" "))
                    });
                    if takes_value && !word.contains('=') {
                        words.next();
                    }
                } else {
                    let subcommands = Help::subcommands(&text);
                    if subcommands.contains(word) {
                        path.push(word.clone());
                    } else {
                        assert!(
                            subcommands.is_empty(),
                            "{place}: `tocsin {}` has no subcommand {word} (it has {subcommands:?})",
                            path.join(" ")
                        );
                    }
                }
            }
            assert!(
                !path.is_empty(),
                "{place}: a tocsin command without a subcommand"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} tocsin commands found");
}

/// The anchors mdBook gives the headings of `text`: the heading's text, lower case, spaces as
/// `-`, other punctuation dropped; a repeated one gets `-1`, `-2`, ….
fn heading_ids(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut ids = Vec::new();
    for line in prose(text).lines() {
        let Some(heading) = line
            .strip_prefix('#')
            .map(|rest| rest.trim_start_matches('#'))
            .and_then(|rest| rest.strip_prefix(' '))
        else {
            continue;
        };
        let id: String = heading
            .trim()
            .chars()
            .filter_map(|c| {
                if c.is_alphanumeric() || c == '_' || c == '-' {
                    Some(c.to_ascii_lowercase())
                } else if c.is_whitespace() {
                    Some('-')
                } else {
                    None
                }
            })
            .collect();
        let repeats = seen.entry(id.clone()).or_default();
        ids.push(match *repeats {
            0 => id,
            n => format!("{id}-{n}"),
        });
        *repeats += 1;
    }
    ids
}

/// `path` with `.` and `..` resolved, without touching the file system.
fn normalized(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The targets of the Markdown links in `text` (`[words](target)`), code blocks left out.
fn link_targets(text: &str) -> Vec<String> {
    let prose = prose(text);
    prose
        .match_indices("](")
        .filter_map(|(at, _)| {
            let rest = &prose[at + 2..];
            let end = rest.find(')')?;
            Some(rest[..end].split_whitespace().next()?.to_owned())
        })
        .collect()
}

/// Every relative link of the book stays in the book and points to a page and, after `#`, to
/// one of its headings; the README's links point to files that exist and to their headings.
/// Every page is listed in `SUMMARY.md`.
#[test]
fn every_link_points_to_a_page_and_heading() {
    let mut pages = book_pages();
    let summary = pages
        .iter()
        .find(|page| page.path.ends_with("SUMMARY.md"))
        .expect("docs/src/SUMMARY.md")
        .text
        .clone();
    for page in &pages {
        let relative = page.path.strip_prefix("docs/src").unwrap();
        assert!(
            page.path.ends_with("SUMMARY.md")
                || summary.contains(&format!("]({})", relative.display())),
            "{} is not in SUMMARY.md, so the book leaves it out",
            page.path.display()
        );
    }
    pages.push(Page::read(&repository().join("README.md")));
    let mut checked = 0;
    for page in &pages {
        let in_book = page.path.starts_with("docs/src");
        for target in link_targets(&page.text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let linked = if file.is_empty() {
                page.path.clone()
            } else {
                normalized(&page.path.parent().unwrap().join(file))
            };
            let place = format!("{}: link to {target}", page.path.display());
            assert!(
                !in_book || linked.starts_with("docs/src"),
                "{place}: it leaves the book, so the built book cannot follow it; name the file as code instead"
            );
            let full = repository().join(&linked);
            assert!(
                full.exists(),
                "{place}: {} does not exist",
                linked.display()
            );
            if !anchor.is_empty() {
                assert!(
                    linked.extension().is_some_and(|e| e == "md"),
                    "{place}: an anchor into a file that is not Markdown"
                );
                let ids = heading_ids(&std::fs::read_to_string(&full).unwrap());
                assert!(
                    ids.iter().any(|id| id == anchor),
                    "{place}: {} has no heading #{anchor} (it has {ids:?})",
                    linked.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 50, "only {checked} links found");
}
