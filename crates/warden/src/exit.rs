//! Exit codes, stable for scripts, and which errors map to which.
//!
//! Every command returns one of these; `main` turns an error into `USAGE` unless it
//! comes from a store that cannot record (`NOT_RECORDED`), and a closed stdout (a
//! pager quit early) is not an error at all.

/// The command succeeded (for `call`: the tool ran and returned output).
pub const OK: u8 = 0;
/// The tool ran and failed: a tool error, a trap, or a limit (time, memory, fuel, output).
pub const TOOL_ERROR: u8 = 1;
/// Bad usage, config, component or input; nothing ran.
pub const USAGE: u8 = 2;
/// A policy denied the call, or a limit, a runaway guard or the kill switch refused
/// it; the tool did not run.
pub const DENIED: u8 = 3;
/// The call needs approval; the tool did not run.
pub const HELD: u8 = 4;
/// The call could not be recorded (audit log or run history); its result is withheld.
pub const NOT_RECORDED: u8 = 5;

/// The exit codes for `--help`, kept beside the constants (a test checks they agree).
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success (call: the tool ran and returned output)
  1  the tool failed: a tool error, a trap, or a limit (time, memory, fuel, output size)
  2  bad usage, config, component or input; nothing ran
  3  denied by a policy or refused by a limit (limited); the tool did not run
  4  held for approval; the tool did not run (yet)
  5  the call could not be recorded (audit log or run history); result withheld";

/// Does `error` come from a store that cannot record (the audit log, its key, the run
/// history, the approval queue)? Such a failure is exit 5, not a usage error.
pub fn is_not_recorded(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.is::<warden_core::store::audit::AuditError>()
            || e.is::<warden_core::store::runs::RunsError>()
            || e.is::<warden_core::governance::approvals::ApprovalError>()
            || matches!(
                e.downcast_ref::<warden_core::runtime::LoadError>(),
                Some(warden_core::runtime::LoadError::Store(_))
            )
    })
}

/// Did the error come from writing to a closed stdout (a pager that quit)?
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_every_code_once() {
        for code in [OK, TOOL_ERROR, USAGE, DENIED, HELD, NOT_RECORDED] {
            let listed = EXIT_CODES
                .lines()
                .filter(|l| l.trim_start().starts_with(&format!("{code} ")))
                .count();
            assert_eq!(listed, 1, "exit code {code} in EXIT_CODES");
        }
    }
}
