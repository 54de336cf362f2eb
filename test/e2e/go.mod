module github.com/tenure-dev/tenure/test/e2e

go 1.26
