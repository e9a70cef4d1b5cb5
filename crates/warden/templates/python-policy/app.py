"""`{{name}}`: a warden approval policy in Python. It sees the action (who, which
tool, the validated input, annotations, the time, its own config) and decides: allow,
hold for a person, or deny. It has no clock and no I/O."""

from warden_sdk import Action, WitWorld, allow, deny, hold, policy  # noqa: F401 (WitWorld is the export)


@policy
def evaluate(action: Action):
    if action.annotations["destructive"]:
        return hold("hard", f"{action.tool} is destructive", action.config.get("approvers", []))
    if action.tool in action.config.get("blocked", []):
        return deny(f"{action.tool} is blocked")
    return allow()
