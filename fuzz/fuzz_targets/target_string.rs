//! Target strings (`pid:`, `container:`, `pod:`, `cgroup:`) as the agent parses them, and
//! the controller's pod-name glob. No input may panic; an accepted target prints (its
//! `Display`, which the agent reports back) to a string that parses to the same target.

#![no_main]

use chaos_agent::target::TargetSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(spec) = TargetSpec::parse(text) {
        let shown = spec.to_string();
        let again = TargetSpec::parse(&shown).unwrap_or_else(|e| {
            panic!("{text:?} parsed to {spec:?}, whose {shown:?} is refused: {e}")
        });
        assert_eq!(again, spec, "{text:?} -> {shown:?} does not round-trip");
        match &spec {
            TargetSpec::Pid(pid) => assert!(*pid > 0),
            TargetSpec::Container(id) => {
                assert!(!id.is_empty() && id.len() <= 76 && !id.contains('/'))
            }
            TargetSpec::Pod {
                namespace, name, ..
            } => assert!(!namespace.contains('/') && !name.contains('/')),
            TargetSpec::Cgroup(path) => {
                // The agent joins this path under the cgroup root: it must stay inside.
                assert!(path.starts_with('/') && path.len() > 1);
                assert!(!path.split('/').any(|part| part == ".." || part == "."));
                assert!(!path.contains('\0'));
            }
        }
    }
    // The controller's selector glob over pod names: pattern and name split at the first
    // newline. Linear-time matcher: no input may make it slow (libFuzzer's -timeout).
    let (pattern, name) = text.split_once('\n').unwrap_or((text, ""));
    let matched = chaosctl::engine::selection::glob(pattern, name);
    if !pattern.contains(['*', '?']) {
        assert_eq!(matched, pattern == name, "{pattern:?} vs {name:?}");
    }
    if !pattern.is_empty() && pattern.chars().all(|c| c == '*') {
        assert!(matched, "{pattern:?} must match {name:?}");
    }
});
