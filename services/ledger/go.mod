module github.com/tenure-dev/tenure/services/ledger

go 1.26.0

require (
	github.com/tenure-dev/tenure/pkg v0.0.0
	github.com/tenure-dev/tenure/proto v0.0.0
)

replace (
	github.com/tenure-dev/tenure/pkg => ../../pkg
	github.com/tenure-dev/tenure/proto => ../../proto
)
