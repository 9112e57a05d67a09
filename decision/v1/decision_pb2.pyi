from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Identifier(_message.Message):
    __slots__ = ("kind", "value")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    value: str
    def __init__(self, kind: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("string_value", "number_value", "bool_value")
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    NUMBER_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    string_value: str
    number_value: float
    bool_value: bool
    def __init__(self, string_value: _Optional[str] = ..., number_value: _Optional[float] = ..., bool_value: _Optional[bool] = ...) -> None: ...

class DecideRequest(_message.Message):
    __slots__ = ("customer", "channel", "placement", "limit", "context", "explain")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    customer: Identifier
    channel: str
    placement: str
    limit: int
    context: _containers.MessageMap[str, Value]
    explain: bool
    def __init__(self, customer: _Optional[_Union[Identifier, _Mapping]] = ..., channel: _Optional[str] = ..., placement: _Optional[str] = ..., limit: _Optional[int] = ..., context: _Optional[_Mapping[str, Value]] = ..., explain: _Optional[bool] = ...) -> None: ...

class RemovedOffer(_message.Message):
    __slots__ = ("offer_id", "reason")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    reason: Reason
    def __init__(self, offer_id: _Optional[str] = ..., reason: _Optional[_Union[Reason, _Mapping]] = ...) -> None: ...

class Reason(_message.Message):
    __slots__ = ("code", "detail", "weight")
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    code: str
    detail: str
    weight: float
    def __init__(self, code: _Optional[str] = ..., detail: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class DecidedOffer(_message.Message):
    __slots__ = ("offer_id", "name", "rank", "score", "propensity", "value", "lever", "reasons", "creative_json", "probability")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LEVER_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    CREATIVE_JSON_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    name: str
    rank: int
    score: float
    propensity: float
    value: float
    lever: float
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    creative_json: str
    probability: float
    def __init__(self, offer_id: _Optional[str] = ..., name: _Optional[str] = ..., rank: _Optional[int] = ..., score: _Optional[float] = ..., propensity: _Optional[float] = ..., value: _Optional[float] = ..., lever: _Optional[float] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ..., creative_json: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class DecideResponse(_message.Message):
    __slots__ = ("decision_id", "offers", "cold_start", "eligible_count", "catalog_version", "decided_at_ms", "deliver_at_ms", "timing", "removed", "policy_removed_count", "experiment", "arm", "policy", "model_version")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    COLD_START_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DELIVER_AT_MS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    POLICY_REMOVED_COUNT_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    offers: _containers.RepeatedCompositeFieldContainer[DecidedOffer]
    cold_start: bool
    eligible_count: int
    catalog_version: str
    decided_at_ms: int
    deliver_at_ms: int
    timing: str
    removed: _containers.RepeatedCompositeFieldContainer[RemovedOffer]
    policy_removed_count: int
    experiment: str
    arm: str
    policy: str
    model_version: str
    def __init__(self, decision_id: _Optional[str] = ..., offers: _Optional[_Iterable[_Union[DecidedOffer, _Mapping]]] = ..., cold_start: _Optional[bool] = ..., eligible_count: _Optional[int] = ..., catalog_version: _Optional[str] = ..., decided_at_ms: _Optional[int] = ..., deliver_at_ms: _Optional[int] = ..., timing: _Optional[str] = ..., removed: _Optional[_Iterable[_Union[RemovedOffer, _Mapping]]] = ..., policy_removed_count: _Optional[int] = ..., experiment: _Optional[str] = ..., arm: _Optional[str] = ..., policy: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class DecideBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[DecideRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[DecideRequest, _Mapping]]] = ...) -> None: ...

class DecideBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[DecideResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[DecideResponse, _Mapping]]] = ...) -> None: ...

class GetProfileRequest(_message.Message):
    __slots__ = ("customer",)
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    customer: Identifier
    def __init__(self, customer: _Optional[_Union[Identifier, _Mapping]] = ...) -> None: ...

class Profile(_message.Message):
    __slots__ = ("profile_key", "identifiers", "attributes", "features", "counters", "created_at_ms", "updated_at_ms", "segments", "recent_events")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PROFILE_KEY_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    RECENT_EVENTS_FIELD_NUMBER: _ClassVar[int]
    profile_key: str
    identifiers: _containers.RepeatedCompositeFieldContainer[Identifier]
    attributes: _containers.MessageMap[str, Value]
    features: _containers.ScalarMap[str, float]
    counters: _containers.ScalarMap[str, float]
    created_at_ms: int
    updated_at_ms: int
    segments: _containers.RepeatedScalarFieldContainer[str]
    recent_events: _containers.RepeatedCompositeFieldContainer[ProfileEvent]
    def __init__(self, profile_key: _Optional[str] = ..., identifiers: _Optional[_Iterable[_Union[Identifier, _Mapping]]] = ..., attributes: _Optional[_Mapping[str, Value]] = ..., features: _Optional[_Mapping[str, float]] = ..., counters: _Optional[_Mapping[str, float]] = ..., created_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ..., segments: _Optional[_Iterable[str]] = ..., recent_events: _Optional[_Iterable[_Union[ProfileEvent, _Mapping]]] = ...) -> None: ...

class ProfileEvent(_message.Message):
    __slots__ = ("type", "at_ms", "channel", "offer_id", "decision_id")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    type: str
    at_ms: int
    channel: str
    offer_id: str
    decision_id: str
    def __init__(self, type: _Optional[str] = ..., at_ms: _Optional[int] = ..., channel: _Optional[str] = ..., offer_id: _Optional[str] = ..., decision_id: _Optional[str] = ...) -> None: ...

class UpsertProfileRequest(_message.Message):
    __slots__ = ("identifiers", "attributes", "features")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    identifiers: _containers.RepeatedCompositeFieldContainer[Identifier]
    attributes: _containers.MessageMap[str, Value]
    features: _containers.ScalarMap[str, float]
    def __init__(self, identifiers: _Optional[_Iterable[_Union[Identifier, _Mapping]]] = ..., attributes: _Optional[_Mapping[str, Value]] = ..., features: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ListOffersRequest(_message.Message):
    __slots__ = ("channel", "placement")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    channel: str
    placement: str
    def __init__(self, channel: _Optional[str] = ..., placement: _Optional[str] = ...) -> None: ...

class OfferInfo(_message.Message):
    __slots__ = ("offer_id", "name", "channels", "placements", "value", "lever", "rule", "valid_from_ms", "valid_until_ms", "creative_json")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENTS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LEVER_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    VALID_FROM_MS_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    CREATIVE_JSON_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    name: str
    channels: _containers.RepeatedScalarFieldContainer[str]
    placements: _containers.RepeatedScalarFieldContainer[str]
    value: float
    lever: float
    rule: str
    valid_from_ms: int
    valid_until_ms: int
    creative_json: str
    def __init__(self, offer_id: _Optional[str] = ..., name: _Optional[str] = ..., channels: _Optional[_Iterable[str]] = ..., placements: _Optional[_Iterable[str]] = ..., value: _Optional[float] = ..., lever: _Optional[float] = ..., rule: _Optional[str] = ..., valid_from_ms: _Optional[int] = ..., valid_until_ms: _Optional[int] = ..., creative_json: _Optional[str] = ...) -> None: ...

class ListOffersResponse(_message.Message):
    __slots__ = ("offers", "catalog_version")
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    offers: _containers.RepeatedCompositeFieldContainer[OfferInfo]
    catalog_version: str
    def __init__(self, offers: _Optional[_Iterable[_Union[OfferInfo, _Mapping]]] = ..., catalog_version: _Optional[str] = ...) -> None: ...

class ReloadCatalogRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CatalogInfo(_message.Message):
    __slots__ = ("version", "offer_count", "channels", "placements", "loaded_at_ms")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OFFER_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENTS_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    version: str
    offer_count: int
    channels: _containers.RepeatedScalarFieldContainer[str]
    placements: _containers.RepeatedScalarFieldContainer[str]
    loaded_at_ms: int
    def __init__(self, version: _Optional[str] = ..., offer_count: _Optional[int] = ..., channels: _Optional[_Iterable[str]] = ..., placements: _Optional[_Iterable[str]] = ..., loaded_at_ms: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("event_id", "type", "customer", "timestamp_ms", "channel", "attributes", "offer_id", "decision_id")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: str
    customer: Identifier
    timestamp_ms: int
    channel: str
    attributes: _containers.MessageMap[str, Value]
    offer_id: str
    decision_id: str
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., customer: _Optional[_Union[Identifier, _Mapping]] = ..., timestamp_ms: _Optional[int] = ..., channel: _Optional[str] = ..., attributes: _Optional[_Mapping[str, Value]] = ..., offer_id: _Optional[str] = ..., decision_id: _Optional[str] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class TrackResponse(_message.Message):
    __slots__ = ("profile_key", "duplicate")
    PROFILE_KEY_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    profile_key: str
    duplicate: bool
    def __init__(self, profile_key: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("index", "event_id", "message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    event_id: str
    message: str
    def __init__(self, index: _Optional[int] = ..., event_id: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class TrackSummary(_message.Message):
    __slots__ = ("received", "applied", "duplicates", "rejected", "rejected_count")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    received: int
    applied: int
    duplicates: int
    rejected: _containers.RepeatedCompositeFieldContainer[Rejection]
    rejected_count: int
    def __init__(self, received: _Optional[int] = ..., applied: _Optional[int] = ..., duplicates: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., rejected_count: _Optional[int] = ...) -> None: ...

class IdentifyRequest(_message.Message):
    __slots__ = ("identifiers",)
    IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    identifiers: _containers.RepeatedCompositeFieldContainer[Identifier]
    def __init__(self, identifiers: _Optional[_Iterable[_Union[Identifier, _Mapping]]] = ...) -> None: ...

class IdentifyResponse(_message.Message):
    __slots__ = ("profile", "merged_profile_keys")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    MERGED_PROFILE_KEYS_FIELD_NUMBER: _ClassVar[int]
    profile: Profile
    merged_profile_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, profile: _Optional[_Union[Profile, _Mapping]] = ..., merged_profile_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class ForgetCustomerRequest(_message.Message):
    __slots__ = ("customer",)
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    customer: Identifier
    def __init__(self, customer: _Optional[_Union[Identifier, _Mapping]] = ...) -> None: ...

class ForgetCustomerResponse(_message.Message):
    __slots__ = ("profile_key", "identifiers_removed", "events_removed")
    PROFILE_KEY_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIERS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    profile_key: str
    identifiers_removed: int
    events_removed: int
    def __init__(self, profile_key: _Optional[str] = ..., identifiers_removed: _Optional[int] = ..., events_removed: _Optional[int] = ...) -> None: ...

class WatchTriggersRequest(_message.Message):
    __slots__ = ("from_cursor", "from_end")
    FROM_CURSOR_FIELD_NUMBER: _ClassVar[int]
    FROM_END_FIELD_NUMBER: _ClassVar[int]
    from_cursor: int
    from_end: bool
    def __init__(self, from_cursor: _Optional[int] = ..., from_end: _Optional[bool] = ...) -> None: ...

class Trigger(_message.Message):
    __slots__ = ("cursor", "kind", "name", "profile_key", "identifiers", "at_ms", "event_id", "decision", "channel")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROFILE_KEY_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    cursor: int
    kind: str
    name: str
    profile_key: str
    identifiers: _containers.RepeatedCompositeFieldContainer[Identifier]
    at_ms: int
    event_id: str
    decision: DecideResponse
    channel: str
    def __init__(self, cursor: _Optional[int] = ..., kind: _Optional[str] = ..., name: _Optional[str] = ..., profile_key: _Optional[str] = ..., identifiers: _Optional[_Iterable[_Union[Identifier, _Mapping]]] = ..., at_ms: _Optional[int] = ..., event_id: _Optional[str] = ..., decision: _Optional[_Union[DecideResponse, _Mapping]] = ..., channel: _Optional[str] = ...) -> None: ...

class CampaignRequest(_message.Message):
    __slots__ = ("segment", "channel", "placement", "limit", "context", "name", "format")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    segment: str
    channel: str
    placement: str
    limit: int
    context: _containers.MessageMap[str, Value]
    name: str
    format: str
    def __init__(self, segment: _Optional[str] = ..., channel: _Optional[str] = ..., placement: _Optional[str] = ..., limit: _Optional[int] = ..., context: _Optional[_Mapping[str, Value]] = ..., name: _Optional[str] = ..., format: _Optional[str] = ...) -> None: ...

class CampaignSummary(_message.Message):
    __slots__ = ("path", "members", "decided", "rows", "skipped", "seconds", "catalog_version", "decided_at_ms", "campaign_id")
    PATH_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    DECIDED_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    path: str
    members: int
    decided: int
    rows: int
    skipped: int
    seconds: float
    catalog_version: str
    decided_at_ms: int
    campaign_id: str
    def __init__(self, path: _Optional[str] = ..., members: _Optional[int] = ..., decided: _Optional[int] = ..., rows: _Optional[int] = ..., skipped: _Optional[int] = ..., seconds: _Optional[float] = ..., catalog_version: _Optional[str] = ..., decided_at_ms: _Optional[int] = ..., campaign_id: _Optional[str] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("offer_id", "channel", "top_features")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    TOP_FEATURES_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    channel: str
    top_features: int
    def __init__(self, offer_id: _Optional[str] = ..., channel: _Optional[str] = ..., top_features: _Optional[int] = ...) -> None: ...

class FeatureWeight(_message.Message):
    __slots__ = ("name", "weight")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    name: str
    weight: float
    def __init__(self, name: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class OfferModel(_message.Message):
    __slots__ = ("offer_id", "channel", "impressions", "positives", "propensity", "propensity_low", "propensity_high", "auc", "auc_examples", "updated_at_ms", "top_features", "prior_only")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    IMPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    POSITIVES_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_LOW_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_HIGH_FIELD_NUMBER: _ClassVar[int]
    AUC_FIELD_NUMBER: _ClassVar[int]
    AUC_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    TOP_FEATURES_FIELD_NUMBER: _ClassVar[int]
    PRIOR_ONLY_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    channel: str
    impressions: int
    positives: int
    propensity: float
    propensity_low: float
    propensity_high: float
    auc: float
    auc_examples: int
    updated_at_ms: int
    top_features: _containers.RepeatedCompositeFieldContainer[FeatureWeight]
    prior_only: bool
    def __init__(self, offer_id: _Optional[str] = ..., channel: _Optional[str] = ..., impressions: _Optional[int] = ..., positives: _Optional[int] = ..., propensity: _Optional[float] = ..., propensity_low: _Optional[float] = ..., propensity_high: _Optional[float] = ..., auc: _Optional[float] = ..., auc_examples: _Optional[int] = ..., updated_at_ms: _Optional[int] = ..., top_features: _Optional[_Iterable[_Union[FeatureWeight, _Mapping]]] = ..., prior_only: _Optional[bool] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_version", "catalog_version", "published_at_ms", "examples", "outcomes", "duplicates", "late", "unknown_decision", "pending", "offers", "shared_top_features")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_DECISION_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    SHARED_TOP_FEATURES_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    catalog_version: str
    published_at_ms: int
    examples: int
    outcomes: int
    duplicates: int
    late: int
    unknown_decision: int
    pending: int
    offers: _containers.RepeatedCompositeFieldContainer[OfferModel]
    shared_top_features: _containers.RepeatedCompositeFieldContainer[FeatureWeight]
    def __init__(self, model_version: _Optional[str] = ..., catalog_version: _Optional[str] = ..., published_at_ms: _Optional[int] = ..., examples: _Optional[int] = ..., outcomes: _Optional[int] = ..., duplicates: _Optional[int] = ..., late: _Optional[int] = ..., unknown_decision: _Optional[int] = ..., pending: _Optional[int] = ..., offers: _Optional[_Iterable[_Union[OfferModel, _Mapping]]] = ..., shared_top_features: _Optional[_Iterable[_Union[FeatureWeight, _Mapping]]] = ...) -> None: ...

class DecisionRecordsRequest(_message.Message):
    __slots__ = ("decision_id", "from_ms", "to_ms", "limit")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_MS_FIELD_NUMBER: _ClassVar[int]
    TO_MS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    from_ms: int
    to_ms: int
    limit: int
    def __init__(self, decision_id: _Optional[str] = ..., from_ms: _Optional[int] = ..., to_ms: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class RecordedOffer(_message.Message):
    __slots__ = ("offer_id", "rank", "score", "propensity", "value", "lever", "probability")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LEVER_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    rank: int
    score: float
    propensity: float
    value: float
    lever: float
    probability: float
    def __init__(self, offer_id: _Optional[str] = ..., rank: _Optional[int] = ..., score: _Optional[float] = ..., propensity: _Optional[float] = ..., value: _Optional[float] = ..., lever: _Optional[float] = ..., probability: _Optional[float] = ...) -> None: ...

class DecisionRecord(_message.Message):
    __slots__ = ("decision_id", "decided_at_ms", "profile_key", "channel", "placement", "catalog_version", "model_version", "experiment", "arm", "policy", "features", "feature_names", "offers", "eligible_count", "shadow_arm", "shadow_offers")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_KEY_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHADOW_ARM_FIELD_NUMBER: _ClassVar[int]
    SHADOW_OFFERS_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    decided_at_ms: int
    profile_key: str
    channel: str
    placement: str
    catalog_version: str
    model_version: str
    experiment: str
    arm: str
    policy: str
    features: _containers.RepeatedScalarFieldContainer[float]
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    offers: _containers.RepeatedCompositeFieldContainer[RecordedOffer]
    eligible_count: int
    shadow_arm: str
    shadow_offers: _containers.RepeatedCompositeFieldContainer[RecordedOffer]
    def __init__(self, decision_id: _Optional[str] = ..., decided_at_ms: _Optional[int] = ..., profile_key: _Optional[str] = ..., channel: _Optional[str] = ..., placement: _Optional[str] = ..., catalog_version: _Optional[str] = ..., model_version: _Optional[str] = ..., experiment: _Optional[str] = ..., arm: _Optional[str] = ..., policy: _Optional[str] = ..., features: _Optional[_Iterable[float]] = ..., feature_names: _Optional[_Iterable[str]] = ..., offers: _Optional[_Iterable[_Union[RecordedOffer, _Mapping]]] = ..., eligible_count: _Optional[int] = ..., shadow_arm: _Optional[str] = ..., shadow_offers: _Optional[_Iterable[_Union[RecordedOffer, _Mapping]]] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("from_ms", "to_ms", "dimensions", "lookback_ms", "half_life_ms", "label", "attribution", "charts")
    FROM_MS_FIELD_NUMBER: _ClassVar[int]
    TO_MS_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    LOOKBACK_MS_FIELD_NUMBER: _ClassVar[int]
    HALF_LIFE_MS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    CHARTS_FIELD_NUMBER: _ClassVar[int]
    from_ms: int
    to_ms: int
    dimensions: _containers.RepeatedScalarFieldContainer[str]
    lookback_ms: int
    half_life_ms: int
    label: str
    attribution: bool
    charts: bool
    def __init__(self, from_ms: _Optional[int] = ..., to_ms: _Optional[int] = ..., dimensions: _Optional[_Iterable[str]] = ..., lookback_ms: _Optional[int] = ..., half_life_ms: _Optional[int] = ..., label: _Optional[str] = ..., attribution: _Optional[bool] = ..., charts: _Optional[bool] = ...) -> None: ...

class ReportReply(_message.Message):
    __slots__ = ("json", "charts")
    class ChartsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    JSON_FIELD_NUMBER: _ClassVar[int]
    CHARTS_FIELD_NUMBER: _ClassVar[int]
    json: str
    charts: _containers.ScalarMap[str, bytes]
    def __init__(self, json: _Optional[str] = ..., charts: _Optional[_Mapping[str, bytes]] = ...) -> None: ...
