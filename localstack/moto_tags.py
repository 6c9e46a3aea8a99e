"""Makes moto's EC2 tag lookup linear, loaded into the bed's LocalStack before it starts.

moto's TaggedEC2Resource.get_tags asks describe_tags for one resource id, which walks every tag of
every resource and matches each id with a regular expression. Rendering a DescribeInstances answer
and evaluating any of its filters call it once per instance, so a describe costs instances x tags:
2.6 s per tag-filtered call with 1,110 instances stored, minutes with 10,000. AWS indexes tags.
This reads the resource's own tags from the same dict, in the same order, with the same fields:
the answers do not change, only their cost.

A tag filter with many values cost as much again: tag_filter_matches turns every value into a
regular expression (fnmatch.translate, re.compile) for every instance it tests, so a describe with
200 owner-uid values over 10,000 instances built 2 million patterns and ran past 30 s. This builds
the matcher once per list of values: a set of the values (moto accepts an equal value, and a value
without a wildcard `*`, `?`, `[` or `\\` matches nothing else), and moto's own patterns for the
values with one.
"""

import re

from moto.ec2 import utils as ec2_utils
from moto.ec2.models.core import TaggedEC2Resource
from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix


def get_tags(self):
    resource_id = getattr(self, "id", None)
    if not resource_id:
        return []
    tags = self.ec2_backend.tags.get(resource_id, {})
    resource_type = EC2_PREFIX_TO_RESOURCE.get(get_prefix(resource_id), "")
    return [
        {"resource_id": resource_id, "key": key, "value": value, "resource_type": resource_type}
        for key, value in tags.items()
    ]


TaggedEC2Resource.get_tags = get_tags


_matchers = {}


def _matcher(filter_values):
    """(set of literal values, compiled patterns of the others), built once per list of values."""
    key = tuple(filter_values)
    matcher = _matchers.get(key)
    if matcher is None:
        wild = ("*", "?", "[", "\\")
        # moto also accepts a value equal to a filter value, wildcards and all.
        literal = set(filter_values)
        patterns = [
            re.compile(ec2_utils.simple_aws_filter_to_re(v))
            for v in filter_values
            if any(c in v for c in wild)
        ]
        if len(_matchers) > 1024:
            _matchers.clear()
        matcher = _matchers[key] = (literal, patterns)
    return matcher


def tag_filter_matches(obj, filter_name, filter_values):
    literal, patterns = _matcher(filter_values)
    if filter_name == "tag-key":
        tag_values = ec2_utils.get_obj_tag_names(obj)
    elif filter_name == "tag-value":
        tag_values = ec2_utils.get_obj_tag_values(obj)
    elif filter_name.startswith("tag:"):
        tag_values = ec2_utils.get_obj_tag_values(obj, key=filter_name[4:])
    else:
        tag_values = [ec2_utils.get_obj_tag(obj, filter_name) or ""]
    for tag_value in tag_values:
        if tag_value in literal or any(p.match(tag_value) for p in patterns):
            return True
    return False


# Only while it is still moto's own (the same lines as moto's, whose loop ends in return False).
if ec2_utils.tag_filter_matches.__module__ == "moto.ec2.utils":
    ec2_utils.tag_filter_matches = tag_filter_matches
