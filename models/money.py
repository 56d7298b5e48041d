"""Money is integer minor units plus an ISO 4217 currency code (lower case, as Stripe writes it)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

#: Currencies Quartermaster accepts; Stripe's zero-decimal currencies would need their own scaling.
SUPPORTED_CURRENCIES = frozenset({"usd", "eur", "gbp"})
#: One million major units: anything larger is a bug or an attack, never a purchase an agent makes.
MAX_MINOR_UNITS = 100_000_000

Currency = Annotated[str, Field(pattern=r"^(usd|eur|gbp)$", description="ISO 4217, lower case")]
MinorUnits = Annotated[int, Field(ge=0, le=MAX_MINOR_UNITS, strict=True)]


class Money(BaseModel):
    """An amount in minor units (cents) of one currency."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    amount: MinorUnits
    currency: Currency = "usd"

    def __str__(self) -> str:
        return f"{self.amount / 100:.2f} {self.currency.upper()}"

    @classmethod
    def usd(cls, dollars: float | int) -> Money:
        return cls(amount=round(dollars * 100), currency="usd")
