export { ApprovalRegistry, ApprovalError, toJson, toUpdate, type ApprovalRecord } from './registry.js';
export { approvalsServiceImpl } from './grpc.js';
export { createApprovalsApi } from './http.js';
export { postApprovalWebhook, approvalWebhookPayload } from './webhook.js';
export { UserStore, ROLES, type Role, type User } from './users.js';
