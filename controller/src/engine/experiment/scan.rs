//! The experiment text, checked before serde sees it: its size, its number of nodes, and
//! no aliases. An alias (`*name`) makes the deserializer replay the anchored node, so a
//! 1 MiB file of aliases to one large list expands into gigabytes of structs (measured: a
//! 0.9 MiB file of 100 000 aliases took chaosctl to 760 MB resident before any check ran).
//! Without aliases every node of the result is a node of the text, so the size and node
//! bounds here bound the memory the parse can take.

use saphyr_parser::{Event, Parser};

/// The largest experiment text accepted (`chaosctl run` files and SubmitRun alike).
pub const MAX_EXPERIMENT_BYTES: usize = 1 << 20;
/// Scalars, sequences and mappings in one file. The largest experiment the other limits
/// allow (64 faults of 256 explicit targets, 32 probes) stays well below this.
pub const MAX_NODES: usize = 50_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum YamlScanError {
    #[error("{bytes} bytes, more than the {MAX_EXPERIMENT_BYTES} accepted")]
    TooLarge { bytes: usize },
    #[error(
        "line {line} column {column}: YAML aliases (`*name`) are not accepted: an alias repeats \
         its anchor's node and can expand a small file into gigabytes; write the value out"
    )]
    Alias { line: usize, column: usize },
    #[error("more than {MAX_NODES} YAML nodes (line {line})")]
    TooManyNodes { line: usize },
    #[error("{0}")]
    Syntax(String),
}

/// Refuses a text that is too large, has too many nodes or uses an alias. A text this
/// parser cannot read is refused too: it must not let an alias through unseen.
pub fn check(text: &str) -> Result<(), YamlScanError> {
    if text.len() > MAX_EXPERIMENT_BYTES {
        return Err(YamlScanError::TooLarge { bytes: text.len() });
    }
    let mut nodes = 0usize;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| YamlScanError::Syntax(e.to_string()))?;
        match event {
            Event::Alias(_) => {
                return Err(YamlScanError::Alias {
                    line: span.start.line(),
                    // Markers count columns from 0; serde_norway's messages from 1.
                    column: span.start.col() + 1,
                });
            }
            Event::Scalar(..) | Event::SequenceStart(..) | Event::MappingStart(..) => {
                nodes += 1;
                if nodes > MAX_NODES {
                    return Err(YamlScanError::TooManyNodes {
                        line: span.start.line(),
                    });
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_documents_and_anchors_without_aliases_pass() {
        check("name: x\nmethod:\n  faults:\n    - &step { name: k, kill: {} }\n").unwrap();
        // `*` inside scalars is text, not an alias.
        check("pod: \"web-*\"\nglob: web-*\nlist: [a*, '*b']\nblock: |\n  *not an alias\n")
            .unwrap();
    }

    #[test]
    fn an_alias_is_refused_with_its_position() {
        let text = "name: x\nmethod:\n  faults:\n    - &s { name: k }\n    - *s\n";
        assert_eq!(
            check(text),
            Err(YamlScanError::Alias { line: 5, column: 7 })
        );
        let merge = "base: &b { a: 1 }\nother:\n  <<: *b\n";
        assert!(matches!(
            check(merge),
            Err(YamlScanError::Alias { line: 3, .. })
        ));
    }

    #[test]
    fn an_alias_bomb_is_refused_at_its_first_alias() {
        // The shape that took the deserializer to 760 MB: one anchored step, then aliases.
        let mut text = String::from(
            "name: bomb\nmethod:\n  faults:\n    - &s\n      name: k\n      target: { targets: [",
        );
        text.push_str(&vec!["pid:1"; 100].join(","));
        text.push_str("] }\n      kill: {}\n");
        text.push_str(&"    - *s\n".repeat(100_000));
        assert!(text.len() < MAX_EXPERIMENT_BYTES);
        let started = std::time::Instant::now();
        assert_eq!(
            check(&text),
            Err(YamlScanError::Alias { line: 8, column: 7 })
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn size_and_node_count_are_bounded() {
        let big = format!("name: x\n#{}\n", "x".repeat(MAX_EXPERIMENT_BYTES));
        assert!(matches!(check(&big), Err(YamlScanError::TooLarge { .. })));
        let many = format!("list: [{}]\n", vec!["1"; MAX_NODES].join(","));
        assert!(matches!(
            check(&many),
            Err(YamlScanError::TooManyNodes { line: 1 })
        ));
        // The root mapping, its key and the sequence are nodes too.
        let enough = format!("list: [{}]\n", vec!["1"; MAX_NODES - 3].join(","));
        check(&enough).unwrap();
    }

    #[test]
    fn unreadable_yaml_is_refused() {
        assert!(matches!(check("a: [1, 2\n"), Err(YamlScanError::Syntax(_))));
    }
}
