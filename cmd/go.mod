module github.com/tenure-dev/tenure/cmd

go 1.26
