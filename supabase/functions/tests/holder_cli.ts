// tests/edge/test_functions.py drives this: a ModelHolder over a real store (the directory in argv[0]) whose reads
// of version "b" are slow, through a promote of "b" and a rollback to "a" while "b" still loads. Prints JSON.

import { ModelHolder } from "../_shared/model.ts";
import { LocalStore } from "../_shared/store.ts";

const base = new LocalStore(Deno.args[0]);
const store = {
  describe: () => base.describe(),
  read: async (version: string, name: string) => {
    if (version === "b") await new Promise((resolve) => setTimeout(resolve, 500));
    return await base.read(version, name);
  },
};
const holder = new ModelHolder(store, ["user"]);
const seen: Record<string, unknown>[] = [];
const note = (step: string, choice: { model: { version: string } | null; reason: string | null }) =>
  seen.push({ step, model: choice.model?.version ?? null, reason: choice.reason });
note("a active", await holder.choose("a"));
note("b promoted", await holder.choose("b")); // b loads in the background; a answers
note("rolled back to a", await holder.choose("a"));
await new Promise((resolve) => setTimeout(resolve, 1500)); // b's load ends meanwhile
note("later", await holder.choose("a"));
note("none active", await holder.choose(null));
console.log(JSON.stringify({ seen, loads: holder.loads }));
Deno.exit(0); // the replaced model's release timer would keep the process 30 s
