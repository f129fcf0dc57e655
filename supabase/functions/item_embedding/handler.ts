// POST /functions/v1/item_embedding (service role): item-tower embeddings of 1-1,000 videos from their metadata, as a
// catalog sync sends it (the Python API's /v1/embeddings/items). Body: {"videos": [{"id"?, "title", "tags",
// "performers", "maker", ...}]}; answer: {"model_version", "dimension", "embeddings": [[...], ...]}.

import { handle, json, readJson } from "../_shared/http.ts";
import { authenticate, embedItems, getContext } from "../_shared/service.ts";

export const handler = handle(async (request) => {
  const body = await readJson(request);
  const ctx = getContext(["item"]);
  (await authenticate(ctx, request)).requireService();
  return json(await embedItems(ctx, body));
});
