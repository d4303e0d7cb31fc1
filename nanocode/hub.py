"""The Hugging Face Hub as every upload uses it (`factory publish`, `trainer export --push`): the
checks that need no request, one client (HF_ENDPOINT: a mirror or a test's loopback Hub), and its
failures as one InputError line."""

import os
from contextlib import contextmanager

from nanocode.common import InputError


def upload_api(repo: str, flag: str, what: str):
    """An HfApi to upload to `repo`, after checking its name (given as `flag`), the token and
    offline mode; `what` names the upload in the offline message ("publish")."""
    import huggingface_hub
    from huggingface_hub.errors import HFValidationError

    try:
        huggingface_hub.utils.validate_repo_id(repo)
    except HFValidationError as e:
        raise InputError(f"{flag} {repo!r} is not a valid repo name: {e}") from None
    if "/" not in repo:
        raise InputError(f"{flag} {repo!r}: give the owner too, as USER/NAME")
    token = huggingface_hub.get_token()
    if not token:
        raise InputError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a write token)")
    if huggingface_hub.constants.is_offline_mode():
        raise InputError(f"HF_HUB_OFFLINE is set: unset it to {what}")
    return huggingface_hub.HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)


@contextmanager
def hub_errors(api, what: str):
    """A refusal or an unreachable Hub inside the block as one line naming `what` was being done."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", "?")
        raise InputError(f"the Hub refused to {what} ({status}): {str(e).splitlines()[0]}") from None
    except OSError as e:  # connection refused, DNS: nothing was sent
        raise InputError(f"cannot reach the Hub at {api.endpoint} to {what}: {e}") from None
