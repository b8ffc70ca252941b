//! The pause kind's plan and its validation. A pause has nothing to set but its
//! duration; what it checks is the target's form: it freezes whole cgroups, so it takes
//! the forms that name a container's cgroup and refuses a `pid:`, which names one
//! process (freezing its cgroup would stop the container's other processes too).

use crate::error::AgentError;
use crate::target::TargetSpec;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PausePlan;

pub(super) fn validate_pause(target: &TargetSpec) -> Result<PausePlan, AgentError> {
    if let TargetSpec::Pid(pid) = target {
        return Err(AgentError::invalid(
            "target",
            format!(
                "pid:{pid} names one process, and a pause freezes a whole cgroup: target its container (container:, pod:) or cgroup (cgroup:), or stop only this process with a process fault (signal STOP)"
            ),
        ));
    }
    Ok(PausePlan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_is_refused_and_the_container_forms_pass() {
        let err = validate_pause(&TargetSpec::Pid(42)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.to_string().contains("signal STOP"), "{err}");
        for text in [
            "container:abc",
            "pod:dev/db-0",
            "pod:dev/db-0/db",
            "cgroup:/k8s.io/abc",
        ] {
            let target = TargetSpec::parse(text).unwrap();
            assert_eq!(validate_pause(&target).unwrap(), PausePlan, "{text}");
        }
    }
}
