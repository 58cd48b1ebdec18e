"""Child process for test_durability: writes through the group-commit writer forever and
prints `writer n` on stdout after each write is acknowledged, until it is SIGKILLed."""

import sys
from pathlib import Path

import trio

from appliance.store import Store, pack_key

WRITERS = 64


async def main(path: Path, round_number: int) -> None:
    store = Store.open(path, map_size=1 << 20)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.serve)

        async def writer(w: int) -> None:
            n = 0
            while True:
                key = pack_key(round_number, w, n)
                await store.write(lambda txn, key=key, n=n: txn.put("kv", key, {"n": n}))
                sys.stdout.write(f"{w} {n}\n")
                sys.stdout.flush()
                n += 1

        for w in range(WRITERS):
            nursery.start_soon(writer, w)
        sys.stdout.write("started\n")
        sys.stdout.flush()


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), int(sys.argv[2]))
