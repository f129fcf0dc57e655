// POST /functions/v1/user_embedding: the caller's embedding from their decisions now, stored for the active version
// (the Python API's /v1/embeddings/user). Answer: {"model_version", "dimension", "embedding": [...]}.

import { handle, json, readBody } from "../_shared/http.ts";
import { authenticate, embedUser, getContext } from "../_shared/service.ts";

export const handler = handle(async (request) => {
  await readBody(request); // no body is needed; an oversized one is still refused
  const ctx = getContext(["user"]);
  return json(await embedUser(ctx, (await authenticate(ctx, request)).requireUser()));
});
