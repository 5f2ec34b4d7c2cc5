"""The providers' plans at the local exchange: each key's budget (the free plans by default)
and, word for word, what each provider answers when a key is unknown or its budget is spent
(providers.md sections 2-4), so the fetchers are tested against the real messages.
"""

from __future__ import annotations

from dataclasses import dataclass

PROVIDERS = ("alphavantage", "twelvedata", "polygon")
AV_DAILY_MESSAGE = ("Thank you for using Alpha Vantage! Our standard API rate limit is {n} requests per day. "
                    "Please subscribe to any of the premium plans at https://www.alphavantage.co/premium/ to "
                    "instantly remove all daily rate limits.")
AV_MINUTE_MESSAGE = ("Thank you for using Alpha Vantage! Our standard API call frequency is {n} calls per minute "
                     "and {d} calls per day. Please visit https://www.alphavantage.co/premium/ if you would like "
                     "to target a higher API call frequency.")
AV_BAD_KEY = ("the parameter apikey is invalid or missing. Please claim your free API key on "
              "(https://www.alphavantage.co/support/#api-key). It should take less than 20 seconds.")
TD_MINUTE = ("You have run out of API credits for the current minute. {used} API credits were used, with the "
             "current limit being {limit}. Wait for the next minute or consider switching to a higher tier plan "
             "at https://twelvedata.com/pricing")
TD_DAY = ("You have run out of API credits for the day. {used} API credits were used, with the current limit "
          "being {limit}. Wait for the next day or consider switching to a higher tier plan at "
          "https://twelvedata.com/pricing")
TD_BAD_KEY = ("**apikey** parameter is incorrect or not specified. You can get your free API key instantly "
              "following this link: https://twelvedata.com/pricing. If you believe that everything is correct, "
              "you can contact us at https://twelvedata.com/contact/customer")
PG_MINUTE = ("You've exceeded the maximum requests per minute, please wait or upgrade your subscription to "
             "continue. https://polygon.io/pricing")


@dataclass(slots=True)
class Limits:
    """A key's budget at one provider (0: unlimited); Twelve Data counts credits (one per symbol)."""

    per_minute: int = 0
    per_day: int = 0


DEFAULT_LIMITS = {  # the free plans (providers.md)
    "alphavantage": Limits(per_minute=0, per_day=25),
    "twelvedata": Limits(per_minute=8, per_day=800),
    "polygon": Limits(per_minute=5, per_day=0),
}
