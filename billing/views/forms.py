"""The browser forms of the reader pages (Flask-WTF), with the same rules as the services.

Every field says what is wrong in words for the reader; the services check the same rules again,
and a :class:`~billing.errors.DomainError` naming a field is put next to it with :func:`attach`.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from flask import render_template
from flask.typing import ResponseReturnValue
from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    EmailField,
    Field,
    IntegerField,
    PasswordField,
    SelectField,
    StringField,
)
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, EqualTo, Length, StopValidation, ValidationError

from billing.errors import DomainError, ValidationFailed
from billing.services import accounts

EU_COUNTRIES: tuple[tuple[str, str], ...] = (
    ("AT", "Austria"),
    ("BE", "Belgium"),
    ("BG", "Bulgaria"),
    ("HR", "Croatia"),
    ("CY", "Cyprus"),
    ("CZ", "Czechia"),
    ("DK", "Denmark"),
    ("EE", "Estonia"),
    ("FI", "Finland"),
    ("FR", "France"),
    ("DE", "Germany"),
    ("GR", "Greece"),
    ("HU", "Hungary"),
    ("IE", "Ireland"),
    ("IT", "Italy"),
    ("LV", "Latvia"),
    ("LT", "Lithuania"),
    ("LU", "Luxembourg"),
    ("MT", "Malta"),
    ("NL", "Netherlands"),
    ("PL", "Poland"),
    ("PT", "Portugal"),
    ("RO", "Romania"),
    ("SK", "Slovakia"),
    ("SI", "Slovenia"),
    ("ES", "Spain"),
    ("SE", "Sweden"),
)
"""The 27 member states of the European Union (ISO 3166-1 alpha-2), listed first."""

_OTHER_COUNTRIES: dict[str, str] = {
    "AD": "Andorra", "AE": "United Arab Emirates", "AF": "Afghanistan",
    "AG": "Antigua and Barbuda", "AI": "Anguilla", "AL": "Albania", "AM": "Armenia",
    "AO": "Angola", "AQ": "Antarctica", "AR": "Argentina", "AS": "American Samoa",
    "AU": "Australia", "AW": "Aruba", "AX": "Åland Islands", "AZ": "Azerbaijan",
    "BA": "Bosnia and Herzegovina", "BB": "Barbados", "BD": "Bangladesh", "BF": "Burkina Faso",
    "BH": "Bahrain", "BI": "Burundi", "BJ": "Benin", "BL": "Saint Barthélemy", "BM": "Bermuda",
    "BN": "Brunei", "BO": "Bolivia", "BQ": "Bonaire, Sint Eustatius and Saba", "BR": "Brazil",
    "BS": "Bahamas", "BT": "Bhutan", "BV": "Bouvet Island", "BW": "Botswana", "BY": "Belarus",
    "BZ": "Belize", "CA": "Canada", "CC": "Cocos (Keeling) Islands",
    "CD": "Congo (Democratic Republic)", "CF": "Central African Republic", "CG": "Congo",
    "CH": "Switzerland", "CI": "Côte d'Ivoire", "CK": "Cook Islands", "CL": "Chile",
    "CM": "Cameroon", "CN": "China", "CO": "Colombia", "CR": "Costa Rica", "CU": "Cuba",
    "CV": "Cabo Verde", "CW": "Curaçao", "CX": "Christmas Island", "DJ": "Djibouti",
    "DM": "Dominica", "DO": "Dominican Republic", "DZ": "Algeria", "EC": "Ecuador",
    "EG": "Egypt", "EH": "Western Sahara", "ER": "Eritrea", "ET": "Ethiopia", "FJ": "Fiji",
    "FK": "Falkland Islands", "FM": "Micronesia", "FO": "Faroe Islands", "GA": "Gabon",
    "GB": "United Kingdom", "GD": "Grenada", "GE": "Georgia", "GF": "French Guiana",
    "GG": "Guernsey", "GH": "Ghana", "GI": "Gibraltar", "GL": "Greenland", "GM": "Gambia",
    "GN": "Guinea", "GP": "Guadeloupe", "GQ": "Equatorial Guinea",
    "GS": "South Georgia and the South Sandwich Islands", "GT": "Guatemala", "GU": "Guam",
    "GW": "Guinea-Bissau", "GY": "Guyana", "HK": "Hong Kong",
    "HM": "Heard Island and McDonald Islands", "HN": "Honduras", "HT": "Haiti",
    "ID": "Indonesia", "IL": "Israel", "IM": "Isle of Man", "IN": "India",
    "IO": "British Indian Ocean Territory", "IQ": "Iraq", "IR": "Iran", "IS": "Iceland",
    "JE": "Jersey", "JM": "Jamaica", "JO": "Jordan", "JP": "Japan", "KE": "Kenya",
    "KG": "Kyrgyzstan", "KH": "Cambodia", "KI": "Kiribati", "KM": "Comoros",
    "KN": "Saint Kitts and Nevis", "KP": "North Korea", "KR": "South Korea", "KW": "Kuwait",
    "KY": "Cayman Islands", "KZ": "Kazakhstan", "LA": "Laos", "LB": "Lebanon",
    "LC": "Saint Lucia", "LI": "Liechtenstein", "LK": "Sri Lanka", "LR": "Liberia",
    "LS": "Lesotho", "LY": "Libya", "MA": "Morocco", "MC": "Monaco", "MD": "Moldova",
    "ME": "Montenegro", "MF": "Saint Martin (French part)", "MG": "Madagascar",
    "MH": "Marshall Islands", "MK": "North Macedonia", "ML": "Mali", "MM": "Myanmar",
    "MN": "Mongolia", "MO": "Macao", "MP": "Northern Mariana Islands", "MQ": "Martinique",
    "MR": "Mauritania", "MS": "Montserrat", "MU": "Mauritius", "MV": "Maldives", "MW": "Malawi",
    "MX": "Mexico", "MY": "Malaysia", "MZ": "Mozambique", "NA": "Namibia",
    "NC": "New Caledonia", "NE": "Niger", "NF": "Norfolk Island", "NG": "Nigeria",
    "NI": "Nicaragua", "NO": "Norway", "NP": "Nepal", "NR": "Nauru", "NU": "Niue",
    "NZ": "New Zealand", "OM": "Oman", "PA": "Panama", "PE": "Peru", "PF": "French Polynesia",
    "PG": "Papua New Guinea", "PH": "Philippines", "PK": "Pakistan",
    "PM": "Saint Pierre and Miquelon", "PN": "Pitcairn", "PR": "Puerto Rico",
    "PS": "Palestine", "PW": "Palau", "PY": "Paraguay", "QA": "Qatar", "RE": "Réunion",
    "RS": "Serbia", "RU": "Russia", "RW": "Rwanda", "SA": "Saudi Arabia",
    "SB": "Solomon Islands", "SC": "Seychelles", "SD": "Sudan", "SG": "Singapore",
    "SH": "Saint Helena, Ascension and Tristan da Cunha", "SJ": "Svalbard and Jan Mayen",
    "SL": "Sierra Leone", "SM": "San Marino", "SN": "Senegal", "SO": "Somalia",
    "SR": "Suriname", "SS": "South Sudan", "ST": "São Tomé and Príncipe", "SV": "El Salvador",
    "SX": "Sint Maarten (Dutch part)", "SY": "Syria", "SZ": "Eswatini",
    "TC": "Turks and Caicos Islands", "TD": "Chad", "TF": "French Southern Territories",
    "TG": "Togo", "TH": "Thailand", "TJ": "Tajikistan", "TK": "Tokelau", "TL": "Timor-Leste",
    "TM": "Turkmenistan", "TN": "Tunisia", "TO": "Tonga", "TR": "Türkiye",
    "TT": "Trinidad and Tobago", "TV": "Tuvalu", "TW": "Taiwan", "TZ": "Tanzania",
    "UA": "Ukraine", "UG": "Uganda", "UM": "United States Minor Outlying Islands",
    "US": "United States", "UY": "Uruguay", "UZ": "Uzbekistan", "VA": "Vatican City",
    "VC": "Saint Vincent and the Grenadines", "VE": "Venezuela",
    "VG": "Virgin Islands (British)", "VI": "Virgin Islands (U.S.)", "VN": "Vietnam",
    "VU": "Vanuatu", "WF": "Wallis and Futuna", "WS": "Samoa", "XK": "Kosovo", "YE": "Yemen",
    "YT": "Mayotte", "ZA": "South Africa", "ZM": "Zambia", "ZW": "Zimbabwe",
}  # fmt: skip


COUNT_MAX_DIGITS = 9
"""The most digits a count typed into a form (seats, days) may have."""


class CountField(IntegerField):
    """A whole number typed into a form (seats, days), of at most :data:`COUNT_MAX_DIGITS`
    digits: a longer one is refused as the field's error before any range check sees it
    (WTForms' ``NumberRange`` turns the number into a float, which overflows: a 500)."""

    data: Any

    def process_formdata(self, valuelist: list[Any]) -> None:
        """Read the number, refusing one with too many digits."""
        if valuelist and len(str(valuelist[0]).strip().lstrip("+-")) > COUNT_MAX_DIGITS:
            self.data = None
            raise ValueError(f"Enter a number of at most {COUNT_MAX_DIGITS} digits.")
        super().process_formdata(valuelist)

    def pre_validate(self, form: Any) -> None:
        """A number that could not be read has its one error; the range checks are skipped."""
        if self.process_errors:
            raise StopValidation()


def _sort_key(item: tuple[str, str]) -> str:
    """Sort by name as a reader expects, with accents ignored (Åland among the A's)."""
    decomposed = unicodedata.normalize("NFKD", item[1])
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


OTHER_COUNTRIES: tuple[tuple[str, str], ...] = tuple(
    sorted(_OTHER_COUNTRIES.items(), key=_sort_key)
)
"""Every other ISO 3166-1 alpha-2 country (and Kosovo, ``XK``, as Stripe knows it), by name."""

COUNTRY_NAMES: dict[str, str] = dict(EU_COUNTRIES + OTHER_COUNTRIES)
"""Country name by code, for every code the sign-up form accepts."""


COUNTRY_CHOICES: list[SelectChoice] = [
    SelectChoice("", "Choose…"),
    *(SelectChoice(code, name, optgroup="European Union") for code, name in EU_COUNTRIES),
    *(SelectChoice(code, name, optgroup="Other countries") for code, name in OTHER_COUNTRIES),
]
"""The sign-up form's country options: an empty "Choose…", then the EU, then the rest."""


def _valid_email(_form: FlaskForm, field: Field) -> None:
    """The address passes the same check as the services (syntax only, no DNS)."""
    try:
        accounts.normalise_email(field.data or "", field=field.name)
    except ValidationFailed as error:
        raise ValidationError(error.message) from error


def _known_country(_form: FlaskForm, field: Field) -> None:
    if field.data not in COUNTRY_NAMES:
        raise ValidationError("Choose your country from the list.")


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def _new_password_rules(required_message: str) -> list[Any]:
    return [
        DataRequired(required_message),
        Length(
            min=accounts.PASSWORD_MIN_LENGTH,
            message=f"Use at least {accounts.PASSWORD_MIN_LENGTH} characters for your password.",
        ),
        Length(
            max=accounts.PASSWORD_MAX_LENGTH,
            message=f"Use at most {accounts.PASSWORD_MAX_LENGTH} characters for your password.",
        ),
    ]


def _email_field(label: str = "E-mail address") -> EmailField:
    return EmailField(
        label, [DataRequired("Enter your e-mail address."), _valid_email], filters=[_strip]
    )


class SignupForm(FlaskForm):
    """Create an account: address, password, name and country (for VAT)."""

    email = _email_field()
    password = PasswordField("Password", _new_password_rules("Choose a password."))
    name = StringField(
        "Your name",
        [DataRequired("Enter your name."), Length(max=200, message="Use at most 200 characters.")],
        filters=[_strip],
    )
    country = SelectField(
        "Country",
        [DataRequired("Choose your country."), _known_country],
        choices=COUNTRY_CHOICES,
        validate_choice=False,
        filters=[_upper],
    )


class LoginForm(FlaskForm):
    """Log in with e-mail and password."""

    email = _email_field()
    password = PasswordField("Password", [DataRequired("Enter your password.")])


class ResetRequestForm(FlaskForm):
    """Ask for a password reset link."""

    email = _email_field()


class ResetPasswordForm(FlaskForm):
    """Choose a new password from a reset link."""

    password = PasswordField("New password", _new_password_rules("Choose a new password."))
    password_confirm = PasswordField(
        "Repeat the new password",
        [
            DataRequired("Repeat the new password."),
            EqualTo("password", message="The two passwords are not the same."),
        ],
    )


class ButtonForm(FlaskForm):
    """A form that is only a button (and its CSRF token): start the trial, resend a link."""


class PasswordChangeForm(FlaskForm):
    """Change the password, proving the current one."""

    current_password = PasswordField(
        "Current password", [DataRequired("Enter your current password.")]
    )
    new_password = PasswordField("New password", _new_password_rules("Choose a new password."))


class EmailChangeForm(FlaskForm):
    """Move the account to another address, confirmed by a link sent there."""

    password = PasswordField("Your password", [DataRequired("Enter your password.")])
    new_email = _email_field("New e-mail address")


class CountryChangeForm(FlaskForm):
    """The country the reader lives in now (VAT is charged there), confirmed when their card
    was issued elsewhere."""

    country = SelectField(
        "The country you live in now",
        [DataRequired("Choose the country you live in."), _known_country],
        choices=COUNTRY_CHOICES,
        validate_choice=False,
        filters=[_upper],
    )
    confirm = BooleanField("Yes, I live in this country although my card was issued elsewhere")


class DeleteAccountForm(FlaskForm):
    """Delete the account, proving the password."""

    password = PasswordField("Your password", [DataRequired("Enter your password to confirm.")])


def attach(form: FlaskForm, error: DomainError) -> bool:
    """Put a domain error's message on the form field it names; ``False`` if there is no such field."""
    field = form._fields.get(error.field) if error.field else None
    if field is None:
        return False
    field.errors = [*field.errors, error.message]
    return True


def render_form(
    template: str, form: FlaskForm, status: int | None = None, **context: Any
) -> ResponseReturnValue:
    """Render a form page: 200 when shown, 400 when a submission was refused (unless ``status``)."""
    if status is None:
        status = 400 if form.is_submitted() else 200
    return render_template(template, form=form, **context), status


def render_refused(
    template: str, form: FlaskForm, error: DomainError, **context: Any
) -> ResponseReturnValue:
    """Re-render ``form`` with a domain error next to its field (400), or above the form."""
    if attach(form, error):
        return render_form(template, form, 400, **context)
    return render_form(template, form, error.status, form_error=error.message, **context)
