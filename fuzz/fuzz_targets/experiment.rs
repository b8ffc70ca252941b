//! The experiment file parser (`chaosctl run FILE`, SubmitRun): arbitrary text through
//! the alias/size/node scan, serde and validation. Nothing may panic, and libFuzzer's
//! -timeout and -rss_limit_mb bound time and memory per input. An accepted text passes
//! the scan (so has no alias) and validates again; its steps make agent requests.

#![no_main]

use std::collections::HashMap;

use chaosctl::engine::experiment;
use chaosctl::engine::experiment::scan;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let scanned = scan::check(text);
    let Ok(parsed) = experiment::parse(text) else {
        return;
    };
    assert_eq!(scanned, Ok(()), "parse accepted what the scan refused");
    assert!(text.len() <= scan::MAX_EXPERIMENT_BYTES);
    experiment::validate(&parsed).expect("an accepted experiment validates again");
    assert!(!parsed.method.faults.is_empty());
    for step in &parsed.method.faults {
        for target in &step.target.targets {
            let request = chaosctl::engine::request::inject_request(
                step,
                target,
                None,
                &HashMap::new(),
                false,
            );
            // A deletion goes to the Kubernetes API; every other step is an agent's fault.
            let deletes = matches!(step.fault, experiment::FaultSpec::DeletePod(_));
            assert_eq!(
                request.fault.is_some(),
                !deletes,
                "step `{}` makes no fault",
                step.name
            );
        }
    }
});
