// Command megatest is the load generator; see megatest/.
package main

import (
	"os"

	"github.com/megacomet/megacomet/megatest"
)

func main() { os.Exit(megatest.Main(os.Args[1:])) }
