"""Reversible masking: values a policy covers never reach the model; its answer gets them back.

    detect        what `mask_upstream` covers, compiled once per policy
    placeholders  the typed `[EMAIL_1]` form, and reading a model's mangled copies
    vault         value <-> placeholder, per request or per session
    request       one request's masking (its texts) and its answer's restorer
    restore       placeholders back to values in a stream, holding back a partial one only
    store         session vaults kept encrypted (memory, Redis)
"""

from ingate.masking.request import Masking
from ingate.masking.restore import Restorer
from ingate.masking.vault import Vault

__all__ = ["Masking", "Restorer", "Vault"]
