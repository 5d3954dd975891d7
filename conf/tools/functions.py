"""The sample's implementations of conf/tools/tools.json: a toy bank, enough for the execution check to run."""

from __future__ import annotations

BALANCES = {"checking": 1520.40, "savings": 8200.00, "credit_card": -312.75}


def get_balance(account: str) -> dict:
    """Get the current balance of one of the customer's accounts."""
    return {"account": account, "balance": BALANCES[account], "currency": "EUR"}


def transfer_money(from_account: str, to_account: str, amount: float, when: str = "now", date: str | None = None) -> dict:
    """Move money between the customer's own accounts, now or on a later date."""
    if from_account == to_account:
        raise ValueError("cannot transfer to the same account")
    if amount > BALANCES[from_account]:
        raise ValueError(f"insufficient funds in {from_account}")
    return {"status": "scheduled" if when == "scheduled" else "done", "amount": amount, "date": date}


def block_card(card_last_digits: str, reason: str, order_replacement: bool = True) -> dict:
    """Block a card at once, for example when it is lost or stolen."""
    return {"card": f"**** {card_last_digits}", "blocked": True, "replacement": order_replacement}


def list_transactions(account: str, limit: int = 10, categories: list[str] | None = None, period: dict | None = None) -> list:
    """List the latest transactions of an account, optionally only some categories."""
    return [{"account": account, "amount": -12.5, "category": (categories or ["groceries"])[0]}][:limit]
