// Test bed node: the pause (sandbox) image and a test image, built locally
// (there is no registry to pull from). Standard library only.
module k106.com/ec2-operator/tests/cluster/node/images

go 1.26.0
