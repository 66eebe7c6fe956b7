"""The built-in value detectors of classification rules (`{"detector": name}`), each from a maintained library.

- `email`: email-validator in syntax-only mode (no DNS lookup, no deliverability check).
- `phone`: phonenumbers; a value is a phone number when it parses as a valid number written internationally
  (`+44 20 7946 0958`) or, without a country code, as a valid number of `PHONE_DEFAULT_REGION` (US).
- `credit_card`: a payment card number (13-19 digits, spaces or dashes allowed) whose issuer prefix is one of
  `CARD_PREFIXES` (Visa, Mastercard, American Express, Discover, JCB, Diners Club, UnionPay) and whose check digit
  passes python-stdnum's Luhn check.
- `iban`: python-stdnum's IBAN (country format and ISO 7064 mod 97-10 check digits).
- `national_id`: any of `NATIONAL_IDS`, python-stdnum's validators: US SSN (written AAA-GG-SSSS only: a bare
  9-digit string is too often some other number), French NIR, German tax IdNr, Dutch BSN, Spanish DNI and
  Italian codice fiscale.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

PHONE_DEFAULT_REGION = "US"
# Issuer identification number prefixes (ISO/IEC 7812) as (first, last) of a leading-digits range.
CARD_PREFIXES: tuple[tuple[str, str], ...] = (
    ("4", "4"),  # Visa
    ("51", "55"),  # Mastercard
    ("2221", "2720"),  # Mastercard 2-series
    ("34", "34"),  # American Express
    ("37", "37"),
    ("6011", "6011"),  # Discover
    ("644", "649"),
    ("65", "65"),
    ("3528", "3589"),  # JCB
    ("300", "305"),  # Diners Club
    ("36", "36"),
    ("38", "39"),
    ("62", "62"),  # UnionPay
)
NATIONAL_IDS = ("us.ssn", "fr.nir", "de.idnr", "nl.bsn", "es.dni", "it.codicefiscale")


def is_email(value: str) -> bool:
    from email_validator import EmailNotValidError, validate_email

    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def is_phone(value: str) -> bool:
    import phonenumbers

    try:
        number = phonenumbers.parse(value, None if value.lstrip().startswith("+") else PHONE_DEFAULT_REGION)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(number)


def is_credit_card(value: str) -> bool:
    from stdnum import luhn
    from stdnum.util import clean

    digits = clean(value, " -")
    if not digits.isdigit() or not 13 <= len(digits) <= 19:
        return False
    if not any(first <= digits[: len(first)] <= last for first, last in CARD_PREFIXES):
        return False
    return luhn.is_valid(digits)


def is_iban(value: str) -> bool:
    from stdnum import iban

    return iban.is_valid(value)


def is_national_id(value: str) -> bool:
    for name in NATIONAL_IDS:
        module = importlib.import_module(f"stdnum.{name}")
        if module.is_valid(value) and (name != "us.ssn" or module.format(value) == value.strip()):
            return True
    return False


DETECTORS: dict[str, Callable[[str], bool]] = {
    "email": is_email,
    "phone": is_phone,
    "credit_card": is_credit_card,
    "iban": is_iban,
    "national_id": is_national_id,
}
