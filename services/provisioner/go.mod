module github.com/tenure-dev/tenure/services/provisioner

go 1.26
