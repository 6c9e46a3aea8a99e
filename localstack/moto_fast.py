"""Makes moto's per-instance EC2 lookups independent of how many instances it holds.

moto finds an instance by scanning every reservation it ever created, and most of those scans go
through all_reservations, which first shallow-copies every reservation: get_instance (RunInstances
attaches the root volume through it, TerminateInstances detaches it through it),
get_multi_instances_by_id (Terminate/Start/Stop), get_reservations_by_instance_ids (DescribeInstances
by id), all_instances. RunInstances also finds its new root volume by scanning every volume. With
3,000 instances stored, RunInstances and TerminateInstances take ~230 ms each instead of ~15 ms.
DescribeInstances with filters copied every reservation before filtering; this copies only the
ones that match.

AWS indexes instances by id. This keeps an id -> instance index beside moto's own dicts (moto only
ever appends reservations and instances; the index is rebuilt when the backend is reset) and
answers from it, scanning the newest reservations and then everything before saying "not found":
same objects, same order, same errors, only the cost changes.
"""

import copy
import threading
import weakref

from moto.ec2 import utils as ec2_utils
from moto.ec2.exceptions import InvalidInstanceIdError
from moto.ec2.models import elastic_block_store
from moto.ec2.models import instances as moto_instances

InstanceBackend = moto_instances.InstanceBackend
EBSBackend = elastic_block_store.EBSBackend


class _Index:
    """instance id -> (instance, reservation, position of the reservation in backend.reservations)."""

    def __init__(self, reservations):
        self.reservations = reservations  # the dict this index describes (a reset replaces it)
        self.by_id = {}
        self.seen = 0  # reservations indexed so far (the newest one may still be gaining instances)

    def add(self, reservation, position):
        for instance in list(reservation.instances):
            self.by_id[instance.id] = (instance, reservation, position)

    def sync_tail(self):
        """Index the reservations added since the last sync, and the last one seen again."""
        snapshot = list(self.reservations.values())  # pointers only: cheap, and one consistent view
        start = max(self.seen - 1, 0)
        for position in range(start, len(snapshot)):
            self.add(snapshot[position], position)
        self.seen = len(snapshot)

    def rebuild(self):
        self.by_id = {}
        for position, reservation in enumerate(list(self.reservations.values())):
            self.add(reservation, position)
        self.seen = len(self.reservations)


_indexes = weakref.WeakKeyDictionary()
_lock = threading.RLock()


def _find(backend, instance_id):
    """(instance, reservation, position) or None, exactly as a scan of backend.reservations finds it."""
    with _lock:
        index = _indexes.get(backend)
        if index is None or index.reservations is not backend.reservations:
            index = _indexes[backend] = _Index(backend.reservations)
            index.rebuild()
        hit = index.by_id.get(instance_id)
        if hit is None:
            index.sync_tail()
            hit = index.by_id.get(instance_id)
        if hit is None:
            index.rebuild()  # not found: be sure before answering so
            hit = index.by_id.get(instance_id)
        return hit


def get_instance(self, instance_id):
    hit = _find(self, instance_id)
    if hit is None:
        raise InvalidInstanceIdError(instance_id)
    return hit[0]


def get_instance_by_id(self, instance_id):
    hit = _find(self, instance_id)
    return hit[0] if hit else None


def get_multi_instances_by_id(self, instance_ids, filters=None):
    result = []
    not_found_instance_ids = []
    for instance_id in instance_ids:
        hit = _find(self, instance_id)
        if hit is None:
            not_found_instance_ids.append(instance_id)
            continue
        instance = hit[0]
        if instance.applies(filters):
            result.append(instance)
    if not_found_instance_ids:
        raise InvalidInstanceIdError(not_found_instance_ids)
    return result


def get_reservations_by_instance_ids(self, instance_ids, filters=None):
    # moto: every reservation holding one of the ids, in creation order, copied, with only those ids
    holders = {}
    for instance_id in instance_ids:
        hit = _find(self, instance_id)
        if hit is not None:
            holders[hit[2]] = hit[1]
    reservations = []
    for _, reservation in sorted(holders.items(), key=lambda item: item[0]):
        reservation = copy.copy(reservation)
        reservation.instances = [
            instance for instance in reservation.instances if instance.id in instance_ids
        ]
        reservations.append(reservation)
    found_instance_ids = [
        instance.id for reservation in reservations for instance in reservation.instances
    ]
    if len(found_instance_ids) != len(instance_ids):
        invalid_id = list(set(instance_ids).difference(set(found_instance_ids)))[0]
        raise InvalidInstanceIdError(invalid_id)
    if filters is not None:
        reservations = moto_instances.filter_reservations(reservations, filters)
    return reservations


def all_instances(self, filters=None):
    return [
        instance
        for reservation in list(self.reservations.values())
        for instance in reservation.instances
        if instance.applies(filters)
    ]


def all_running_instances(self, filters=None):
    return [
        instance
        for reservation in list(self.reservations.values())
        for instance in reservation.instances
        if instance.state_code == 16 and instance.applies(filters)
    ]


_all_reservations = InstanceBackend.all_reservations


def all_reservations(self, filters=None):
    if filters is None:
        return _all_reservations(self)  # every reservation, copied: callers may change the copies
    # filter_reservations on copies of all of them, without copying the ones that do not match
    passes = ec2_utils.passes_filter_dict
    result = []
    for reservation in list(self.reservations.values()):
        instances = [instance for instance in reservation.instances if passes(instance, filters)]
        if instances:
            reservation = copy.copy(reservation)
            reservation.instances = instances
            result.append(reservation)
    return result


_describe_volumes = EBSBackend.describe_volumes


def describe_volumes(self, volume_ids=None, filters=None):
    # One id (RunInstances tags each new root volume this way): a dict lookup instead of a scan.
    if volume_ids and not filters and len(volume_ids) == 1:
        volume = self.volumes.get(volume_ids[0])
        if volume is not None and volume.id == volume_ids[0]:
            return [volume]
    return _describe_volumes(self, volume_ids=volume_ids, filters=filters)


# filter_reservations is the function moto's all_reservations uses; only take over when it is
# still moto's own, so a patched filter keeps being honoured.
if moto_instances.filter_reservations is ec2_utils.filter_reservations:
    InstanceBackend.all_reservations = all_reservations
InstanceBackend.get_instance = get_instance
InstanceBackend.get_instance_by_id = get_instance_by_id
InstanceBackend.get_multi_instances_by_id = get_multi_instances_by_id
InstanceBackend.get_reservations_by_instance_ids = get_reservations_by_instance_ids
InstanceBackend.all_instances = all_instances
InstanceBackend.all_running_instances = all_running_instances
EBSBackend.describe_volumes = describe_volumes
