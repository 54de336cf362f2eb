module github.com/tenure-dev/tenure/services/ledger

go 1.26
