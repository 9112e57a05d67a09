"""Contact policies over a customer's contact history (``decision.config.policies``).

``contact_blocks`` marks, for every offer, the first policy that removes it. It reads
the history in place (int64 pairs ``(at_ms, tag)``, the tag packing the offer's and
the channel's stable ids and the contact kind), decodes each contact once (offer index
by binary search over the catalog's sorted offer ids, channel bit by the channel's
id), then counts per policy:

- scope OFFER: contacts of each offer (an offer-sized counter, reset after use);
- scope CHANNEL: contacts on the channel being decided, any offer;
- scope CUSTOMER: contacts on the policy's channels (all when 0), any offer.

A policy applies when its channel mask is 0 or holds the request's channel bit;
a contact counts when its kind is the policy's, it is within the window
``now_ms - window < at_ms <= now_ms``, and (scopes OFFER and CUSTOMER) its channel is
one of the policy's. Cost: O(policies x contacts) + O(n) to clear, no allocation
beyond three arrays of the history's length and one of n.
"""

from __future__ import annotations

import numpy as np
from numba import njit

SCOPE_OFFER = 0
SCOPE_CHANNEL = 1
SCOPE_CUSTOMER = 2


@njit(cache=True, nogil=True, error_model="numpy")
def contact_blocks(contacts, now_ms, channel_bit, pol_scope, pol_kind, pol_max, pol_window,
                   pol_channels, pol_offers, sorted_sids, sid_offer, channel_sids, blocked):
    """Fill ``blocked`` (int32[n]) with the index of the first policy removing each
    offer, -1 where none does; return how many offers are blocked."""
    blocked[:] = -1
    n_contacts = contacts.shape[0]
    n_policies = pol_scope.shape[0]
    if n_contacts == 0 or n_policies == 0:
        return 0
    n = blocked.shape[0]
    c_offer = np.empty(n_contacts, dtype=np.int64)
    c_bit = np.empty(n_contacts, dtype=np.int64)
    c_kind = np.empty(n_contacts, dtype=np.int64)
    for h in range(n_contacts):
        tag = contacts[h, 1]
        c_kind[h] = tag & 0xFF
        sid = (tag >> 8) & 0xFFFF
        c_bit[h] = 0
        for b in range(channel_sids.shape[0]):
            if channel_sids[b] == sid:
                c_bit[h] = 1 << b
                break
        osid = tag >> 24
        j = np.searchsorted(sorted_sids, osid)
        c_offer[h] = sid_offer[j] if j < sorted_sids.shape[0] and sorted_sids[j] == osid else -1
    count = np.zeros(n, dtype=np.int32)
    total = 0
    for p in range(n_policies):
        mask = pol_channels[p]
        if mask != 0 and mask & channel_bit == 0:
            continue
        since = now_ms - pol_window[p]
        kind = pol_kind[p]
        scope = pol_scope[p]
        if scope == SCOPE_OFFER:
            for h in range(n_contacts):
                if (c_kind[h] == kind and since < contacts[h, 0] <= now_ms and c_offer[h] >= 0
                        and (mask == 0 or c_bit[h] & mask != 0)):
                    count[c_offer[h]] += 1
            for h in range(n_contacts):
                i = c_offer[h]
                if i < 0 or count[i] == 0:
                    continue
                if count[i] >= pol_max[p] and pol_offers[p, i] and blocked[i] < 0:
                    blocked[i] = p
                    total += 1
                count[i] = 0
        else:
            seen = 0
            for h in range(n_contacts):
                if c_kind[h] != kind or not since < contacts[h, 0] <= now_ms:
                    continue
                if scope == SCOPE_CHANNEL:
                    if c_bit[h] == channel_bit:
                        seen += 1
                elif mask == 0 or c_bit[h] & mask != 0:
                    seen += 1
            if seen >= pol_max[p]:
                for i in range(n):
                    if pol_offers[p, i] and blocked[i] < 0:
                        blocked[i] = p
                        total += 1
    return total


# --------------------------------------------------------------------- reference
def contact_blocks_reference(contacts, now_ms, channel_bit, pol_scope, pol_kind, pol_max,
                             pol_window, pol_channels, pol_offers, sorted_sids, sid_offer,
                             channel_sids):
    """Plain Python reference of ``contact_blocks`` (returns the blocked array)."""
    n = pol_offers.shape[1]
    blocked = [-1] * n
    offer_of = {int(s): int(o) for s, o in zip(sorted_sids, sid_offer)}
    bit_of = {int(s): 1 << b for b, s in enumerate(channel_sids)}
    decoded = [(int(at), offer_of.get(int(tag) >> 24, -1), bit_of.get((int(tag) >> 8) & 0xFFFF, 0),
                int(tag) & 0xFF) for at, tag in contacts]
    for p in range(len(pol_scope)):
        mask = int(pol_channels[p])
        if mask and not mask & channel_bit:
            continue
        live = [(o, b) for at, o, b, k in decoded
                if k == pol_kind[p] and now_ms - pol_window[p] < at <= now_ms]
        if pol_scope[p] == SCOPE_OFFER:
            for i in range(n):
                hits = sum(1 for o, b in live if o == i and (not mask or b & mask))
                if hits >= pol_max[p] and pol_offers[p, i] and blocked[i] < 0:
                    blocked[i] = p
        else:
            if pol_scope[p] == SCOPE_CHANNEL:
                hits = sum(1 for o, b in live if b == channel_bit)
            else:
                hits = sum(1 for o, b in live if not mask or b & mask)
            if hits >= pol_max[p]:
                for i in range(n):
                    if pol_offers[p, i] and blocked[i] < 0:
                        blocked[i] = p
    return np.array(blocked, dtype=np.int32)
