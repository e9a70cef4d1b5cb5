"""`spend-limit`: hold or refuse calls that move money, by the amount they name.

Config (the policy's `[policy.config]`):
  field       the input field holding the amount (default "amount")
  soft_above  hold for a soft approval above this (default 100)
  hard_above  hold for a hard approval above this (default 1000)
  deny_above  refuse above this (default 10000)
  approvers   who may decide (default: the configured approvers)

A call without the field, or with one that is not a number, is refused: a policy that
cannot read the amount must not guess it.
"""

from warden_sdk import Action, WitWorld, allow, deny, hold, log, policy  # noqa: F401 (WitWorld is the export)


@policy
def evaluate(action: Action):
    config = action.config if isinstance(action.config, dict) else {}
    field = config.get("field", "amount")
    amount = action.input.get(field) if isinstance(action.input, dict) else None
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        return deny(f"{action.tool}: no numeric `{field}` in the input; refusing to guess the amount")
    approvers = [str(a) for a in config.get("approvers", [])]
    if amount > config.get("deny_above", 10000):
        return deny(f"{field} {amount} is above the limit of {config.get('deny_above', 10000)}")
    if amount > config.get("hard_above", 1000):
        log("info", "hard hold", amount=amount)
        return hold("hard", f"{field} {amount} needs sign-off (above {config.get('hard_above', 1000)})", approvers)
    if amount > config.get("soft_above", 100):
        return hold("soft", f"{field} {amount} is above {config.get('soft_above', 100)}", approvers)
    return allow()
