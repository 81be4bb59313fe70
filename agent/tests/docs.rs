//! README.md and docs/ link only to files inside the repository, and every link resolves:
//! the file exists, and a `#fragment` names one of its headings.
use std::path::{Path, PathBuf};

use pulldown_cmark::{Event, Parser, Tag, TagEnd};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ has a parent")
        .canonicalize()
        .expect("repository root")
}

/// The Markdown files a reader starts from.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut docs = vec![root.join("README.md")];
    let mut in_docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    in_docs.sort();
    docs.extend(in_docs);
    docs
}

/// Link and image destinations of a Markdown text.
fn links(text: &str) -> Vec<String> {
    Parser::new(text)
        .filter_map(|event| match event {
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                Some(dest_url.to_string())
            }
            _ => None,
        })
        .collect()
}

/// GitHub's anchors for a text's headings: lower case, spaces to `-`, punctuation dropped.
fn anchors(text: &str) -> Vec<String> {
    let mut anchors = Vec::new();
    let mut heading: Option<String> = None;
    for event in Parser::new(text) {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some(h) = heading.take() {
                    anchors.push(
                        h.trim()
                            .to_lowercase()
                            .chars()
                            .filter_map(|c| match c {
                                ' ' => Some('-'),
                                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                                _ => None,
                            })
                            .collect(),
                    );
                }
            }
            _ => {}
        }
    }
    anchors
}

#[test]
fn readme_and_docs_link_only_to_files_in_the_repository() {
    let root = repo_root();
    let mut problems = Vec::new();
    let mut checked = 0;
    for doc in documents(&root) {
        let text = std::fs::read_to_string(&doc).expect("readable");
        let name = doc
            .strip_prefix(&root)
            .unwrap_or(&doc)
            .display()
            .to_string();
        for link in links(&text) {
            checked += 1;
            if link.contains("://") || link.starts_with("//") || link.starts_with('/') {
                problems.push(format!("{name}: {link} leaves the repository"));
                continue;
            }
            let (path, fragment) = link.split_once('#').unwrap_or((&link, ""));
            let target = if path.is_empty() {
                doc.clone()
            } else {
                doc.parent().unwrap_or(&root).join(path)
            };
            let Ok(target) = target.canonicalize() else {
                problems.push(format!("{name}: {link} does not exist"));
                continue;
            };
            if !target.starts_with(&root) {
                problems.push(format!("{name}: {link} is outside the repository"));
                continue;
            }
            if !fragment.is_empty() && target.extension().is_some_and(|e| e == "md") {
                let target_text = std::fs::read_to_string(&target).unwrap_or_default();
                if !anchors(&target_text).iter().any(|a| a == fragment) {
                    problems.push(format!("{name}: {link}: no heading #{fragment}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        checked >= 5,
        "only {checked} links found: is the parser reading them?"
    );
}

#[test]
fn readme_links_every_document_in_docs() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let linked = links(&readme);
    for doc in documents(&root).into_iter().skip(1) {
        let relative = doc
            .strip_prefix(&root)
            .expect("under the root")
            .display()
            .to_string();
        assert!(
            linked
                .iter()
                .any(|l| l.split('#').next() == Some(relative.as_str())),
            "README.md does not link {relative}"
        );
    }
    // The README's two commands are still the project's own.
    for command in ["cargo xtask run", "cargo xtask test"] {
        assert!(readme.contains(command), "README lost `{command}`");
    }
}

#[test]
fn anchors_follow_github() {
    assert_eq!(
        anchors("# Installing herdwatch\n## Privileges\n## `program <name>`\n"),
        vec!["installing-herdwatch", "privileges", "program-name"]
    );
}
