"""The interop versions of draft-ietf-httpbis-resumable-upload served, and what each changes.

A client names its version in `Upload-Draft-Interop-Version` on every request; the
version is bumped by the drafts for every breaking change. Clients shipping today:

    3  draft -01       Apple URLSession, iOS 17 / macOS 14
    5  draft -03       Apple URLSession, iOS 18.0; tus-js-client `ietf-draft-03`
    6  drafts -04, -05 Apple URLSession, iOS 18.1+; tus-js-client `ietf-draft-05`
    7  drafts -06..-08
    8  drafts -09 and later (the current one)

Version 4 (draft -02, no known client) is served too: it is version 5 without progress
interim responses, which this server does not send anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# Problem types (RFC 9457) the drafts register, from version 6 (mismatch, completed) and
# version 7 (inconsistent length) on.
PROBLEM_BASE = "https://iana.org/assignments/http-problem-types#"
MISMATCHING_OFFSET = "mismatching-upload-offset"
COMPLETED_UPLOAD = "completed-upload"
INCONSISTENT_LENGTH = "inconsistent-upload-length"


@dataclass(frozen=True)
class Version:
    number: int
    drafts: str
    # Version 3 says `Upload-Incomplete: ?1` where later ones say `Upload-Complete: ?0`.
    incomplete_field: bool
    # An append without the field: version 3 reads "not incomplete" (the upload ends
    # there, as draft -01 says); 4 to 6 read "not complete" (the drafts' own examples,
    # and what tusd does); 7 on require the field.
    absent_means_complete: bool
    complete_required: bool
    # Appends must be sent as `application/partial-upload` (draft -04 on).
    partial_upload_type: bool
    # Upload-Length and Upload-Limit on responses (draft -04 on).
    lengths_and_limits: bool
    # The Upload-Limit key for the resource's remaining lifetime: `expires` in drafts
    # -04/-05, `max-age` from -06 on; "" where there is no Upload-Limit.
    age_key: str
    # The status of a successful append: 201 in drafts -01 to -05 (they require it for
    # an incomplete upload), 204 from -06 on (their examples).
    append_status: int
    problem_types: frozenset[str]


_V5 = Version(
    number=5,
    drafts="-03",
    incomplete_field=False,
    absent_means_complete=False,
    complete_required=False,
    partial_upload_type=False,
    lengths_and_limits=False,
    age_key="",
    append_status=201,
    problem_types=frozenset(),
)
_V6 = replace(
    _V5,
    number=6,
    drafts="-04, -05",
    partial_upload_type=True,
    lengths_and_limits=True,
    age_key="expires",
    problem_types=frozenset({MISMATCHING_OFFSET, COMPLETED_UPLOAD}),
)
_V7 = replace(
    _V6,
    number=7,
    drafts="-06 to -08",
    complete_required=True,
    age_key="max-age",
    append_status=204,
    problem_types=_V6.problem_types | {INCONSISTENT_LENGTH},
)
VERSIONS: dict[int, Version] = {
    3: replace(_V5, number=3, drafts="-01", incomplete_field=True, absent_means_complete=True),
    4: replace(_V5, number=4, drafts="-02"),
    5: _V5,
    6: _V6,
    7: _V7,
    8: replace(_V7, number=8, drafts="-09 on"),
}
SUPPORTED = tuple(VERSIONS)
