"""Kademlia core: providers, republish, refresh, forged records and contact floods."""

from __future__ import annotations

import random

from node.identity import Identity
from node.overlay import wire
from node.overlay.dht import Kademlia, LookupDone, LookupKind
from node.overlay.records import NodeRecord, sign_record
from node.overlay.sim import Swarm
from node.overlay.wire import Message, MsgType

FAR = 10**10


def make(seed: int, host: str = "198.51.100.1") -> tuple[Identity, NodeRecord]:
    ident = Identity.from_seed(seed.to_bytes(32, "big"))
    rec = sign_record(ident, addresses=(f"{host}:7700",), nat_class="public", seq=1, expires=FAR)
    return ident, rec


def ping_from(record: NodeRecord, request_id: int = 1) -> bytes:
    return wire.encode(Message(MsgType.PING, request_id, sender=record))


def test_providers_found_across_a_swarm() -> None:
    swarm = Swarm(60, loss=0.02, seed=7)
    swarm.join_all()
    key = bytes(range(32))
    provider, seeker = swarm.nodes[5], swarm.nodes[40]
    provider.core.provide(key, swarm.now)
    swarm._pump(provider)
    swarm.run(until=swarm.now + 30)
    lookup_id = seeker.core.find_providers(key, swarm.now)
    swarm._pump(seeker)
    swarm.run(stop=lambda: lookup_id in seeker.done, until=swarm.now + 60)
    done = seeker.done[lookup_id]
    assert done.kind == LookupKind.PROVIDERS
    assert [p.node_id for p in done.providers] == [provider.node_id]
    stored = sum(key in n.core.providers for n in swarm.nodes)
    assert 10 <= stored <= 20


def test_provider_records_expire_unless_republished() -> None:
    swarm = Swarm(30, seed=3)
    for node in swarm.nodes:
        node.core.provider_ttl = 600.0
        node.core.republish_interval = 300.0
    swarm.join_all()
    key = b"\x42" * 32
    a, b = swarm.nodes[1], swarm.nodes[2]
    a.core.provide(key, swarm.now)
    b.core.provide(key, swarm.now)
    b.core.stop_providing(key)
    swarm._pump(a)
    swarm._pump(b)
    swarm.run(until=swarm.now + 1500)  # past the TTL: only a's republished record is left
    seeker = swarm.nodes[20]
    lookup_id = seeker.core.find_providers(key, swarm.now)
    swarm._pump(seeker)
    swarm.run(stop=lambda: lookup_id in seeker.done, until=swarm.now + 60)
    assert [p.node_id for p in seeker.done[lookup_id].providers] == [a.node_id]


def test_request_whose_record_is_not_the_senders_is_rejected() -> None:
    _, own = make(1)
    core = Kademlia(own)
    _, honest = make(2)
    impostor_id = make(3)[1].node_id
    assert core.handle_request(impostor_id, ping_from(honest), now=0) is None
    assert len(core.table) == 0
    assert core.counters["rejected"] == 1
    reply = core.handle_request(honest.node_id, ping_from(honest), now=0)
    assert reply is not None and wire.decode(reply).type == MsgType.PONG
    assert len(core.table) == 1


def test_flood_of_fake_contacts_from_one_subnet_is_bounded() -> None:
    _, own = make(1)
    core = Kademlia(own, rng=random.Random(1))
    for seed in range(100, 400):
        _, fake = make(seed, host=f"203.0.113.{seed % 200 + 1}")
        core.handle_request(fake.node_id, ping_from(fake), now=1.0)
    per_bucket = [len(b.contacts) for b in core.table.buckets if b.contacts]
    assert max(per_bucket) <= 2
    assert len(core.table) <= 2 * len(per_bucket)


def test_full_bucket_keeps_live_old_contacts() -> None:
    _, own = make(1)
    core = Kademlia(own, k=2, per_subnet=0, rng=random.Random(1))
    # find three peers that share a bucket
    peers: dict[int, list[NodeRecord]] = {}
    seed = 10
    while True:
        _, rec = make(seed, host=f"10.{seed % 250}.{seed // 250}.1")
        seed += 1
        bucket = peers.setdefault(256 - (rec.id_int ^ own.id_int).bit_length(), [])
        bucket.append(rec)
        if len(bucket) == 3:
            break
    old1, old2, new = bucket
    core.handle_request(old1.node_id, ping_from(old1), now=1.0)
    core.handle_request(old2.node_id, ping_from(old2), now=2.0)
    core.requests_to_send()
    core.handle_request(new.node_id, ping_from(new), now=10.0)
    assert core.table.get(new.node_id) is None
    [ping] = core.requests_to_send()  # the least recently seen contact is checked
    assert ping.dest == old1
    pong = Message(MsgType.PONG, ping.request_id, sender=old1)
    core.handle_response(ping.request_id, old1.node_id, wire.encode(pong), now=10.5)
    assert core.table.get(old1.node_id) is not None and core.table.get(new.node_id) is None
    # when an old contact stops answering, the waiting newcomer takes its place
    core.handle_request(new.node_id, ping_from(new), now=20.0)
    [ping] = core.requests_to_send()
    core.handle_timer(now=20.0 + core.rpc_timeout)
    assert core.table.get(ping.dest.node_id) is None
    assert core.table.get(new.node_id) is not None


def test_idle_buckets_are_refreshed() -> None:
    _, own = make(1)
    core = Kademlia(own, refresh_interval=600.0)
    _, peer = make(2)
    core.add_contact(peer, now=0.0)
    assert core.requests_to_send() == []
    timer = core.get_timer()
    assert timer is not None
    now = 0.0
    while not (sent := core.requests_to_send()):
        now = core.get_timer() or now
        core.handle_timer(now)
    assert now >= 600.0
    assert [wire.decode(r.data).type for r in sent] == [MsgType.FIND_NODE]


def test_lookup_on_empty_table_finishes_empty() -> None:
    _, own = make(1)
    core = Kademlia(own)
    lookup_id = core.find_node(bytes(32), now=0.0)
    event = core.next_event()
    assert isinstance(event, LookupDone) and event.lookup_id == lookup_id
    assert event.nodes == [] and event.hops == 0


def test_random_id_in_bucket_lands_in_that_bucket() -> None:
    _, own = make(1)
    core = Kademlia(own, rng=random.Random(5))
    for index in (0, 1, 100, 255):
        target = core.random_id_in_bucket(index)
        assert core.table.bucket_for(target) is core.table.buckets[index]
