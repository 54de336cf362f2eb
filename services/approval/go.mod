module github.com/tenure-dev/tenure/services/approval

go 1.26
